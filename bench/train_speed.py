"""Training throughput (characters/second) of textgen against keras.layers.LSTM and PyTorch.

Every contender trains the same model shape, embedding -> L LSTM layers -> dense logits, with
the same step: forward + backward + Adam (lr 2e-3) with global-norm gradient clipping at 5.0,
float32, mean sparse softmax cross-entropy from logits, the (h, c) state carried from one window
to the next (truncated BPTT, as textgen's Trainer does).

  cli      the real `textgen train` command, `--steps LONG`: per-step time from the run's own
           TensorBoard log (the wall times of its steps from SKIP to LONG; start-up,
           compilation and checkpoints left out); what users get, reported first
  textgen  the trainer's own compiled step, `textgen.steps.train_step` (via
           `build_training` + `compile_train_step`, the default lstm_path "auto"), with a flat
           learning rate like the others
  keras    Embedding -> keras.layers.LSTM(return_sequences, return_state) x L -> Dense, in a
           tf.function step built the same way
  torch    nn.Embedding -> nn.LSTM(num_layers=L, batch_first) -> nn.Linear, torch.optim.Adam,
           clip_grad_norm_; only when `import torch` works (optional benchmark dependency);
           on CUDA when torch sees a GPU

Method: each contender lives in its own worker process (so the libraries' thread pools never
fight over the 2 cores); each is built and warmed up (compiling its graphs), then for each repeat
the contenders run round-robin, one at a time (the starting contender rotates), each timing
`--steps` steps, each step synchronised by fetching the loss as a Python float. Reported: median chars/s per contender and
the median of the per-repeat ratios textgen/keras and textgen/torch.

    python bench/train_speed.py                       # shapes a,b,c, 5 repeats x 5 steps
    python bench/train_speed.py --shapes a --repeats 2 --steps 2
    python bench/train_speed.py --shapes c --head-shortlist 0   # textgen with one softmax, like the others
    git worktree add /tmp/before REV && python bench/train_speed.py --shapes a --cli-baseline /tmp/before
    python bench/train_speed.py --shapes a --cells lstm,peephole,cifg   # `textgen train --cell X` side by side

With `--cells`, only `textgen train` runs, once per cell (`cli:lstm`, `cli:peephole`, ...), with
`--precision float32`, round-robin as above; reported: chars/s per cell and the median of the
per-repeat ratios against the first cell named.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

LEARNING_RATE = 2e-3
CLIP_NORM = 5.0
ZIPF_ABOVE = 1000  # vocabularies larger than this draw Zipfian ids (draw_ids)


@dataclass(frozen=True)
class Shape:
    name: str
    num_layers: int
    units: int
    embedding_dim: int
    batch: int
    seq_len: int
    vocab: int
    head_shortlist: int | None = None  # textgen's output layer (--head-shortlist); None: its own choice

    def describe(self) -> str:
        head = ("textgen's automatic output layer" if self.head_shortlist is None
                else f"textgen --head-shortlist {self.head_shortlist}")
        ids = "Zipfian ids" if self.vocab > ZIPF_ABOVE else "uniform ids"
        return (f"({self.name}) {self.num_layers} x {self.units} LSTM, embedding {self.embedding_dim}, "
                f"batch {self.batch}, seq_len {self.seq_len}, vocab {self.vocab} ({ids}); {head}")


SHAPES = {
    "a": Shape("a", 2, 256, 64, 64, 100, 65),
    "b": Shape("b", 3, 512, 64, 32, 100, 65),
    "c": Shape("c", 2, 256, 64, 64, 100, 6000),
}


# ---------------------------------------------------------------- contenders
# Each contender: .name, .step(x, y) -> float loss (runs one synchronised training step on numpy
# int32 arrays x, y of shape (batch, seq_len), carrying the recurrent state).


class TextgenContender:
    """textgen's model trained by the trainer's own compiled step, `textgen.steps.train_step`
    (flat learning rate here, like the other contenders)."""

    name = "textgen"
    note = ""

    def __init__(self, shape: Shape, seed: int):
        import tensorflow as tf

        from textgen.config import ModelConfig, TrainConfig
        from textgen.model import flatten_state
        from textgen.steps import build_training, compile_train_step

        self.tf = tf
        model_config = ModelConfig(vocab_size=shape.vocab, embedding_dim=shape.embedding_dim,
                                   units=shape.units, num_layers=shape.num_layers,
                                   head_shortlist=shape.head_shortlist)
        train_config = TrainConfig(batch_size=shape.batch, seq_len=shape.seq_len,
                                   learning_rate=LEARNING_RATE, clip_norm=CLIP_NORM, seed=seed,
                                   warmup_steps=0, lr_decay="none", precision="float32")
        training = build_training(model_config, train_config)
        self.model = training.model
        self._step_fn = compile_train_step(training)
        self.note = (f"textgen set TF's thread pools to intra-op {training.threads[0]}, inter-op "
                     f"{training.threads[1]} (one row group per core)" if training.threads
                     else "textgen kept TF's default thread pools")
        self._flat = flatten_state(self.model.initial_state(shape.batch))

    def step(self, x, y) -> float:
        loss, self._flat = self._step_fn(self.tf.constant(x), self.tf.constant(y), self._flat)
        return float(loss)


class KerasContender:
    """The same shape from keras.layers.LSTM, trained by a tf.function step built the same way."""

    name = "keras"
    note = ""

    def __init__(self, shape: Shape, seed: int):
        import keras
        import tensorflow as tf

        self.tf = tf
        keras.utils.set_random_seed(seed)

        class KerasLM(keras.Model):
            def __init__(self):
                super().__init__()
                self.embedding = keras.layers.Embedding(shape.vocab, shape.embedding_dim)
                self.lstms = [keras.layers.LSTM(shape.units, return_sequences=True, return_state=True)
                              for _ in range(shape.num_layers)]
                self.head = keras.layers.Dense(shape.vocab)

            def call(self, ids, flat_states):
                x = self.embedding(ids)
                new = []
                for i, lstm in enumerate(self.lstms):
                    x, h, c = lstm(x, initial_state=[flat_states[2 * i], flat_states[2 * i + 1]])
                    new += [h, c]
                return self.head(x), new

        model = KerasLM()
        zeros = tf.zeros((shape.batch, shape.units))
        self._flat = [zeros] * (2 * shape.num_layers)
        model(tf.zeros((shape.batch, shape.seq_len), tf.int32), self._flat)  # build the weights
        optimizer = keras.optimizers.Adam(learning_rate=LEARNING_RATE, global_clipnorm=CLIP_NORM)
        optimizer.build(model.trainable_variables)

        def step(x, y, flat_states):
            with tf.GradientTape() as tape:
                logits, states = model(x, flat_states, training=True)
                loss = tf.reduce_mean(
                    tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
            variables = model.trainable_variables
            grads = tape.gradient(loss, variables)
            optimizer.apply_gradients(zip(grads, variables))
            return loss, states

        self.model = model
        self._step_fn = tf.function(step, reduce_retracing=True)

    def step(self, x, y) -> float:
        loss, self._flat = self._step_fn(self.tf.constant(x), self.tf.constant(y), self._flat)
        return float(loss)


class TorchContender:
    """The same shape in PyTorch: nn.Embedding -> nn.LSTM -> nn.Linear, Adam, clip_grad_norm_."""

    name = "torch"
    note = ""

    def __init__(self, shape: Shape, seed: int):
        import torch
        from torch import nn

        self.torch = torch
        torch.manual_seed(seed)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

        class TorchLM(nn.Module):
            def __init__(self):
                super().__init__()
                self.embedding = nn.Embedding(shape.vocab, shape.embedding_dim)
                self.lstm = nn.LSTM(shape.embedding_dim, shape.units, num_layers=shape.num_layers,
                                    batch_first=True)
                self.head = nn.Linear(shape.units, shape.vocab)

            def forward(self, ids, state):
                out, state = self.lstm(self.embedding(ids), state)
                return self.head(out), state

        self.model = TorchLM().to(self.device).train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=LEARNING_RATE)
        zeros = torch.zeros(shape.num_layers, shape.batch, shape.units, device=self.device)
        self._state = (zeros, zeros.clone())
        self.vocab = shape.vocab

    def step(self, x, y) -> float:
        torch = self.torch
        x = torch.from_numpy(x).long().to(self.device)
        y = torch.from_numpy(y).long().to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        logits, (h, c) = self.model(x, self._state)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, self.vocab), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), CLIP_NORM)
        self.optimizer.step()
        self._state = (h.detach(), c.detach())
        return loss.item()


class CliContender:
    """The real `textgen train` process, as users run it: the same shape, batch and step (flat
    learning rate, clip 5), on a random corpus of the shape's vocabulary. One process of `--steps
    LONG` per measurement; per-step time comes from the run's own TensorBoard log (`train/`
    scalars, written every `log_every` = 10 steps with their wall times): from the first entry at
    or after step SKIP to the last. That leaves out start-up, compilation and the first and last
    checkpoints, which took ~20 s a process and varied by seconds (the first method, the wall
    times of two processes of different lengths subtracted, swung 0.84-1.46 in per-repeat
    ratios between cells on a quiet host)."""

    name = "cli"
    note = ""

    def __init__(self, shape: Shape, seed: int, skip: int, long: int, workdir: Path,
                 source: str | None = None, extra: tuple[str, ...] = ()):
        """`source`: a checkout of another textgen (its root folder) to run instead of the
        installed one, through PYTHONPATH: the `cli@baseline` contender, the same command from an
        earlier commit measured side by side. `extra`: more `textgen train` options
        (`--cell peephole --precision float32`)."""
        import numpy as np

        self.shape, self.skip, self.long, self.workdir, self.source = shape, skip, long, workdir, source
        self.extra = list(extra)
        alphabet = np.array([chr(0x4E00 + i) for i in range(shape.vocab)] if shape.vocab > 95
                            else [chr(32 + i) for i in range(shape.vocab)])
        chars = shape.batch * (shape.seq_len + 1) * (long + 10)
        ids = draw_ids(np.random.default_rng(seed), shape.vocab, int(chars / 0.9))
        self.corpus = workdir / "corpus.txt"
        self.corpus.write_text("".join(alphabet[ids]), encoding="utf-8")
        self.runs = 0

    def _train(self, steps: int) -> float:
        self.runs += 1
        command = [sys.executable, "-m", "textgen", "train", str(self.corpus),
                   "--runs-dir", str(self.workdir / "runs"),
                   "--name", f"r{self.runs}", "--units", str(self.shape.units),
                   "--num-layers", str(self.shape.num_layers), "--embedding-dim", str(self.shape.embedding_dim),
                   "--batch-size", str(self.shape.batch), "--seq-len", str(self.shape.seq_len),
                   "--learning-rate", str(LEARNING_RATE), "--clip-norm", str(CLIP_NORM),
                   "--warmup-steps", "0", "--lr-decay", "none", "--steps", str(steps),
                   "--eval-every", "1000000", "--eval-batches", "1", "--quiet"]
        if self.shape.head_shortlist is not None:
            command += ["--head-shortlist", str(self.shape.head_shortlist)]
        command += self.extra
        env = dict(os.environ)
        if self.source:
            env["PYTHONPATH"] = os.pathsep.join([self.source] + [p for p in [env.get("PYTHONPATH")] if p])
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        return self.workdir / "runs" / f"r{self.runs}"

    def seconds_per_step(self) -> float:
        """Train LONG steps in a fresh process; the seconds per step between its logged steps."""
        logged = logged_wall_times(self._train(self.long) / "train")
        kept = [(step, wall) for step, wall in logged if step >= self.skip]
        if len(kept) < 2:
            raise SystemExit(f"train_speed: the run logged steps {[s for s, _ in logged]}; "
                             f"--cli-steps SKIP LONG needs two at or after SKIP")
        (first_step, first_wall), (last_step, last_wall) = kept[0], kept[-1]
        return (last_wall - first_wall) / (last_step - first_step)


def logged_wall_times(log_dir: Path) -> list[tuple[int, float]]:
    """(step, wall time) of each step a run's TensorBoard log in `log_dir` has scalars for."""
    import tensorflow as tf

    walls = {}
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            if event.summary.value:
                walls.setdefault(event.step, event.wall_time)
    return sorted(walls.items())


# ---------------------------------------------------------------- the benchmark


def _torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means: no torch contender
        return False
    return True


def thread_settings(torch_ok: bool) -> str:
    import tensorflow as tf

    intra = tf.config.threading.get_intra_op_parallelism_threads()
    inter = tf.config.threading.get_inter_op_parallelism_threads()
    parts = [f"tf intra_op={intra}, inter_op={inter} (0 = TF default: all cores)",
             f"os.cpu_count()={os.cpu_count()}"]
    if torch_ok:
        import torch

        parts.insert(1, f"torch num_threads={torch.get_num_threads()}, "
                        f"interop_threads={torch.get_num_interop_threads()}")
    return "; ".join(parts)


def draw_ids(rng, vocab: int, size) -> "np.ndarray":
    """Random character ids: uniform for small vocabularies; for large ones Zipfian (id k with
    probability proportional to 1 / (k + 1)), as the characters of natural text are. A 6,000-
    character vocabulary only comes from such text, and textgen's two-level output layer does less
    work where the next character is frequent (Zipf(1) puts 81% of positions on the 1,024 most
    frequent ids; Song ci's training text puts 90% on its 1,000 most frequent characters)."""
    import numpy as np

    if vocab <= ZIPF_ABOVE:
        return rng.integers(0, vocab, size)
    weights = 1.0 / np.arange(1, vocab + 1)
    return rng.choice(vocab, size=size, p=weights / weights.sum())


def _make_batches(shape: Shape, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    size = (shape.batch, shape.seq_len)
    return [(draw_ids(rng, shape.vocab, size).astype(np.int32), draw_ids(rng, shape.vocab, size).astype(np.int32))
            for _ in range(4)]


def _worker(conn, kind: str, shape: Shape, seed: int, warmup: int, threads: int | None) -> None:
    """One contender in its own process: build, warm up, then time steps when told to.

    Separate processes keep the libraries' thread pools apart: in one process, PyTorch's OpenMP
    workers and TensorFlow's pool spin against each other on 2 cores and both collapse.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if threads:
        if kind == "torch":
            import torch

            torch.set_num_threads(threads)
        else:
            import tensorflow as tf

            tf.config.threading.set_intra_op_parallelism_threads(threads)
    cls = {"textgen": TextgenContender, "keras": KerasContender, "torch": TorchContender}[kind]
    batches = _make_batches(shape, seed)
    t0 = time.perf_counter()
    contender = cls(shape, seed)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    initial = contender.step(*batches[0])
    for i in range(1, max(1, warmup)):
        contender.step(*batches[i % len(batches)])
    conn.send({"name": contender.name, "note": contender.note, "build_s": build_s,
               "warmup_s": time.perf_counter() - t0, "initial": initial})
    n = 0
    while True:
        steps = conn.recv()
        if steps is None:
            return
        t0 = time.perf_counter()
        for _ in range(steps):
            contender.step(*batches[n % len(batches)])
            n += 1
        conn.send(time.perf_counter() - t0)


def bench_shape(shape: Shape, args, torch_ok: bool) -> dict:
    """Start one worker process per contender, then time them round-robin, one at a time."""
    import multiprocessing
    from types import SimpleNamespace

    ctx = multiprocessing.get_context("spawn")
    kinds = ["textgen", "keras"] + (["torch"] if torch_ok else [])
    workers = []
    for kind in kinds:  # built and warmed up one after the other, not concurrently
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(child, kind, shape, args.seed, args.warmup,
                                                 args.threads), daemon=True)
        proc.start()
        workers.append((SimpleNamespace(**parent.recv()), parent, proc))
    contenders = [w[0] for w in workers]
    initial = {c.name: c.initial for c in contenders}
    chars = args.steps * shape.batch * shape.seq_len
    rates = {c.name: [] for c in contenders}
    with tempfile.TemporaryDirectory(prefix="textgen-bench-cli-") as workdir:
        cli = None
        if not args.no_cli:
            cli = CliContender(shape, args.seed, args.cli_steps[0], args.cli_steps[1], Path(workdir))
            rates["cli"] = []
            contenders.insert(0, SimpleNamespace(name="cli", note=f"`textgen train` processes, "
                                                 f"--steps {args.cli_steps[1]}, timed from step {args.cli_steps[0]}",
                                                 build_s=float("nan"), warmup_s=float("nan")))
            initial["cli"] = float("nan")
        baseline = None
        if args.cli_baseline:
            baseline = CliContender(shape, args.seed, args.cli_steps[0], args.cli_steps[1], Path(workdir),
                                    source=str(Path(args.cli_baseline).resolve()))
            baseline.runs = 1000  # its own run names beside cli's
            rates["cli@baseline"] = []
            contenders.insert(1, SimpleNamespace(name="cli@baseline", note=f"`textgen train` of "
                                                 f"{args.cli_baseline} (PYTHONPATH), the same steps",
                                                 build_s=float("nan"), warmup_s=float("nan")))
            initial["cli@baseline"] = float("nan")
        slots = ([("worker", w) for w in workers] + ([("cli", cli)] if cli else [])
                 + ([("cli@baseline", baseline)] if baseline else []))
        for rep in range(args.repeats):
            order = slots[rep % len(slots):] + slots[: rep % len(slots)]
            for kind, item in order:
                if kind in ("cli", "cli@baseline"):
                    rates[kind].append(shape.batch * shape.seq_len / item.seconds_per_step())
                    continue
                info, conn, _ = item
                conn.send(args.steps)
                rates[info.name].append(chars / conn.recv())
    for _, conn, proc in workers:
        conn.send(None)
        proc.join(timeout=30)
    return {"contenders": contenders, "initial": initial, "rates": rates}


def bench_cells(shape: Shape, args) -> dict:
    """`textgen train --cell X --precision float32` for each of `args.cells`, round-robin, the
    starting cell rotating per repeat. Returns bench_shape's result form."""
    from types import SimpleNamespace

    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    rates = {f"cli:{cell}": [] for cell in cells}
    contenders = [SimpleNamespace(name=f"cli:{cell}", note="", build_s=float("nan"), warmup_s=float("nan"))
                  for cell in cells]
    contenders[0].note = (f"`textgen train --cell X --precision float32` processes, --steps "
                          f"{args.cli_steps[1]}, timed from step {args.cli_steps[0]} by the run's own log")
    with tempfile.TemporaryDirectory(prefix="textgen-bench-cells-") as workdir:
        slots = []
        for k, cell in enumerate(cells):
            contender = CliContender(shape, args.seed, args.cli_steps[0], args.cli_steps[1], Path(workdir),
                                     extra=("--cell", cell, "--precision", "float32"))
            contender.runs = 1000 * k  # run names of their own
            slots.append((f"cli:{cell}", contender))
        for rep in range(args.repeats):
            for name, contender in slots[rep % len(slots):] + slots[: rep % len(slots)]:
                rates[name].append(shape.batch * shape.seq_len / contender.seconds_per_step())
                print(f"  repeat {rep + 1}: {name} {rates[name][-1]:,.0f} chars/s", flush=True)
    return {"contenders": contenders, "initial": {}, "rates": rates}


def report_cells(shape: Shape, result: dict) -> None:
    """Each cell's chars/s and its per-repeat ratios against the first cell."""
    contenders, rates = result["contenders"], result["rates"]
    print(f"\nshape {shape.describe()}\n  note: {contenders[0].note}")
    print(f"  {'contender':20s} {'median chars/s':>15s} {'min':>10s} {'max':>10s}")
    for c in contenders:
        r = rates[c.name]
        print(f"  {c.name:20s} {statistics.median(r):15,.0f} {min(r):10,.0f} {max(r):10,.0f}")
    first = contenders[0].name
    for c in contenders[1:]:
        ratios = [a / b for a, b in zip(rates[c.name], rates[first])]
        print(f"  ratio {c.name}/{first}: median {statistics.median(ratios):.2f} "
              f"(per repeat: {', '.join(f'{q:.2f}' for q in ratios)})")


def report(shape: Shape, result: dict) -> None:
    contenders, initial, rates = result["contenders"], result["initial"], result["rates"]
    names = [c.name for c in contenders]
    print(f"\nshape {shape.describe()}")
    for c in contenders:
        if c.note:
            print(f"  note: {c.note}")
    print(f"  {'contender':20s} {'median chars/s':>15s} {'min':>10s} {'max':>10s} "
          f"{'build s':>8s} {'warmup s':>9s} {'initial loss':>13s}")
    for c in contenders:
        r = rates[c.name]
        print(f"  {c.name:20s} {statistics.median(r):15,.0f} {min(r):10,.0f} {max(r):10,.0f} "
              f"{c.build_s:8.1f} {c.warmup_s:9.1f} {initial.get(c.name, float('nan')):13.4f}")
    for ours in [n for n in ("cli", "textgen") if n in names]:
        for other in [n for n in names if n not in ("cli", ours) and not (ours == "textgen" and n == "cli@baseline")]:
            ratios = [a / b for a, b in zip(rates[ours], rates[other])]
            print(f"  ratio {ours}/{other}: median {statistics.median(ratios):.2f} "
                  f"(per repeat: {', '.join(f'{q:.2f}' for q in ratios)})")
    ln_v = math.log(shape.vocab)
    initial = {k: v for k, v in initial.items() if not k.startswith("cli")}
    losses = list(initial.values())
    spread = max(losses) - min(losses)
    ok = all(abs(v - ln_v) < 0.05 * ln_v for v in losses) and spread < 0.05 * ln_v
    print(f"  initial losses vs ln(vocab)={ln_v:.4f}: "
          + ", ".join(f"{k} {v - ln_v:+.4f}" for k, v in initial.items())
          + f"; spread {spread:.4f} -> {'OK' if ok else 'MISMATCH'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="a,b,c", help="comma-separated subset of a,b,c")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per contender first")
    parser.add_argument("--threads", type=int, default=None,
                        help="set torch threads and TF intra-op threads (default: each library's own)")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch contender")
    parser.add_argument("--no-cli", action="store_true", help="skip the `textgen train` contender")
    parser.add_argument("--cli-steps", type=int, nargs=2, default=(10, 100), metavar=("SKIP", "LONG"),
                        help="the `textgen train` contender trains LONG steps and is timed from its logged "
                             "step SKIP on (compilation left out)")
    parser.add_argument("--cli-baseline", metavar="DIR",
                        help="also time `textgen train` from another checkout (e.g. a `git worktree` of an "
                             "earlier commit), side by side: the cli/cli@baseline ratio")
    parser.add_argument("--head-shortlist", type=int, default=None,
                        help="textgen's output layer (cli and textgen contenders): 0 = one softmax over the "
                             "vocabulary, like the others; default: textgen's automatic choice")
    parser.add_argument("--cells", metavar="CELL,CELL,...",
                        help="time only `textgen train --cell X` (float32) for these cells side by side, "
                             "ratios against the first (e.g. lstm,peephole,cifg)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    bad = [s for s in shapes if s not in SHAPES]
    if bad or args.repeats < 1 or args.steps < 1:
        parser.error(f"unknown shape(s) {bad}" if bad else "--repeats and --steps must be >= 1")

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    torch_ok = not args.no_torch and _torch_available()
    if args.threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        except RuntimeError as e:  # TF already initialised in this process
            print(f"warning: cannot set TF threads now ({e})")
        if torch_ok:
            import torch

            torch.set_num_threads(args.threads)
    print(f"train_speed: python {sys.version.split()[0]}, tensorflow {tf.__version__}, "
          f"keras {__import__('keras').__version__}"
          + (f", torch {__import__('torch').__version__}" if torch_ok else ", torch not available"))
    print(f"GPUs visible to TF: {len(tf.config.list_physical_devices('GPU'))}")
    print(f"threads: {thread_settings(torch_ok)}")
    print(f"repeats {args.repeats} x {args.steps} timed steps, warmup {args.warmup}, "
          f"Adam lr {LEARNING_RATE}, global clip norm {CLIP_NORM}, float32")
    print(f"load average at start: {_loadavg()} (other processes compete for the same cores)")
    for name in shapes:
        shape = dataclasses.replace(SHAPES[name], head_shortlist=args.head_shortlist)
        if args.cells:
            report_cells(shape, bench_cells(shape, args))
        else:
            report(shape, bench_shape(shape, args, torch_ok))
    print(f"\nload average at end: {_loadavg()}")
    return 0


def _loadavg() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


if __name__ == "__main__":
    sys.exit(main())
