"""Generation throughput (characters/second): textgen's Sampler against the TF tutorial's loop.

Both contenders use the same model and weights (shape a: embedding 64 -> 2 x 256 LSTM -> 65
logits, random init) and sample at temperature 1.0:

  textgen   `Sampler(model).generate(prime_ids, SampleConfig(temperature=1.0, length=L,
            num_samples=S))`: each chunk of characters is one graph call running a tf.while_loop
            (top-k/top-p are off, so its compiled step branches past the filter's sort)
  tutorial  the TensorFlow text-generation tutorial's approach: a Python loop calling one
            tf.function per character, which runs one model step and tf.random.categorical on
            temperature-scaled logits; the recurrent state is carried in Python and the ids are
            collected as tensors and fetched once at the end (the tutorial also maps ids to
            strings inside the step; neither contender decodes here)

  baseline  with `--baseline DIR`: textgen's Sampler as another checkout (DIR, e.g. a `git
            worktree` of an earlier commit) has it, the same model and weights, in a worker
            process of this script run with PYTHONPATH=DIR; it times its own calls, as here

For 1 stream and for 64 streams, the contenders alternate over `--repeats` repeats; reported are
the median chars/s (streams x length / seconds) and the median per-repeat ratios of textgen to
each other contender.

    python bench/sample_speed.py                      # length 2000, 3 repeats
    python bench/sample_speed.py --length 500 --repeats 2
    python bench/sample_speed.py --baseline /path/to/older/checkout --streams 1,64
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

STREAMS = (1, 64)


def build(seed: int):
    import keras

    from textgen.config import ModelConfig
    from textgen.model import build_model

    keras.utils.set_random_seed(seed)
    return build_model(ModelConfig(vocab_size=65, embedding_dim=64, units=256, num_layers=2))


class TextgenSampler:
    name = "textgen Sampler"

    def __init__(self, model):
        from textgen.sample import Sampler

        self.sampler = Sampler(model)

    def generate(self, streams: int, length: int, seed: int):
        import numpy as np

        from textgen.config import SampleConfig

        config = SampleConfig(temperature=1.0, length=length, num_samples=streams, seed=seed)
        chunks = list(self.sampler.generate(np.array([0], np.int32), config))
        return np.concatenate(chunks, axis=1)  # (streams, length)


class TutorialLoop:
    name = "tutorial loop"

    def __init__(self, model):
        import tensorflow as tf

        from textgen.model import flatten_state, unflatten_state

        self.tf, self.model = tf, model
        self.flatten = flatten_state

        @tf.function
        def one_step(ids, flat_states, temperature):
            logits, states = model(ids[:, None], unflatten_state(flat_states, model.cell_kind))  # (b, 1, vocab)
            logits = logits[:, -1, :] / temperature
            next_ids = tf.random.categorical(logits, num_samples=1, dtype=tf.int32)[:, 0]
            return next_ids, flatten_state(states)

        self.one_step = one_step

    def generate(self, streams: int, length: int, seed: int):
        tf = self.tf
        tf.random.set_seed(seed)
        ids = tf.zeros((streams,), tf.int32)
        flat = self.flatten(self.model.initial_state(streams))
        temperature = tf.constant(1.0)
        out = []
        for _ in range(length):
            ids, flat = self.one_step(ids, flat, temperature)
            out.append(ids)
        return tf.stack(out, axis=1).numpy()  # (streams, length)


class BaselineSampler:
    """textgen's Sampler of another checkout, in a worker process (`--worker`) that reads one
    "streams length seed" line per call and answers "characters seconds"."""

    name = "textgen@baseline"

    def __init__(self, directory: str, seed: int):
        import numpy as np

        self.np = np
        env = {**os.environ, "PYTHONPATH": os.path.abspath(directory), "TF_CPP_MIN_LOG_LEVEL": "2"}
        self.process = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", "--seed", str(seed)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                        cwd=os.path.abspath(directory))
        self.seconds = 0.0

    def generate(self, streams: int, length: int, seed: int):
        self.process.stdin.write(f"{streams} {length} {seed}\n")
        self.process.stdin.flush()
        size, self.seconds = self.process.stdout.readline().split()
        self.seconds = float(self.seconds)
        assert int(size) == streams * length
        return self.np.zeros((streams, length), self.np.int32)  # its ids stay in the worker


def worker(seed: int) -> int:
    """The `--worker` loop: time this PYTHONPATH's Sampler on request (see BaselineSampler)."""
    sampler = TextgenSampler(build(seed))
    for line in sys.stdin:
        streams, length, call_seed = map(int, line.split())
        t0 = time.perf_counter()
        ids = sampler.generate(streams, length, call_seed)
        print(ids.size, time.perf_counter() - t0, flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=2000, help="characters per stream")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--streams", default=",".join(map(str, STREAMS)),
                        help="comma-separated stream counts (default 1,64)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline", metavar="DIR", help="also time the Sampler of the checkout DIR")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.seed)
    if args.length < 1 or args.repeats < 1:
        parser.error("--length and --repeats must be >= 1")
    streams_list = [int(s) for s in args.streams.split(",") if s.strip()]

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    print(f"sample_speed: python {sys.version.split()[0]}, tensorflow {tf.__version__}, "
          f"GPUs visible: {len(tf.config.list_physical_devices('GPU'))}, "
          f"tf intra_op={tf.config.threading.get_intra_op_parallelism_threads()} "
          f"inter_op={tf.config.threading.get_inter_op_parallelism_threads()} (0 = default)")
    print(f"model: embedding 64 -> 2 x 256 LSTM -> vocab 65 (random init), temperature 1.0, "
          f"length {args.length} per stream, {args.repeats} repeats")
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    model = build(args.seed)
    contenders = [TextgenSampler(model), TutorialLoop(model)]
    if args.baseline:
        contenders.insert(1, BaselineSampler(args.baseline, args.seed))
    for streams in streams_list:
        for c in contenders:  # warm-up: traces the graphs for this batch size
            t0 = time.perf_counter()
            ids = c.generate(streams, min(args.length, 65), args.seed)
            assert ids.shape == (streams, min(args.length, 65)), ids.shape
            assert 0 <= ids.min() and ids.max() < 65
            c.warmup_s = time.perf_counter() - t0
        rates = {c.name: [] for c in contenders}
        for rep in range(args.repeats):
            order = contenders if rep % 2 == 0 else contenders[::-1]
            for c in order:
                t0 = time.perf_counter()
                ids = c.generate(streams, args.length, args.seed + rep + 1)
                seconds = getattr(c, "seconds", None) or time.perf_counter() - t0  # the worker's own
                rates[c.name].append(ids.size / seconds)
        print(f"\n{streams} stream(s) x {args.length} characters")
        print(f"  {'contender':18s} {'median chars/s':>15s} {'min':>10s} {'max':>10s} {'warmup s':>9s}")
        for c in contenders:
            r = rates[c.name]
            print(f"  {c.name:18s} {statistics.median(r):15,.0f} {min(r):10,.0f} {max(r):10,.0f} "
                  f"{c.warmup_s:9.1f}")
        for other in contenders[1:]:
            ratios = [x / y for x, y in zip(rates[contenders[0].name], rates[other.name])]
            print(f"  ratio textgen/{other.name.split()[0]}: median {statistics.median(ratios):.2f} "
                  f"(per repeat: {', '.join(f'{q:.2f}' for q in ratios)})")
    print(f"\nload average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
