"""Training: a tiny run learns a regular corpus, state is carried, checkpoints reload and resume."""

import json

import numpy as np
import pytest

from textgen import checkpoint as ckpt
from textgen.runformat import RUN_FILE
from textgen.inference import load_run
from textgen.config import SampleConfig
from textgen.launch import launch
from textgen.sample import generate_text

PATTERN = "the quick brown fox jumps over the lazy dog.\n"
TINY_MODEL = {"embedding_dim": 8, "units": 32, "num_layers": 1}
TINY_TRAIN = {"batch_size": 8, "seq_len": 32, "learning_rate": 1e-2, "eval_every": 50,
              "eval_batches": 4, "seed": 7}


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "pattern.txt"
    path.write_text(PATTERN * 200)
    return path


def run(corpus, tmp_path, name, resume=False, **train):
    return launch([str(corpus)], {} if resume else TINY_MODEL, {**TINY_TRAIN, **train},
                  tmp_path / "runs", name=name, resume=resume, show_progress=False,
                  echo=lambda s: None)


def test_tiny_run_learns_a_regular_corpus(corpus, tmp_path):
    run_dir, reason, progress = run(corpus, tmp_path, "learn", steps=200)
    assert reason == "budget" and progress.step == 200
    assert progress.best_val_bpc < 0.5, progress.history
    meta = json.loads((run_dir / RUN_FILE).read_text())
    assert meta["step"] == 200 and meta["best_val_bpc"] == progress.best_val_bpc
    assert [h["step"] for h in meta["history"]] == [50, 100, 150, 200]
    assert (run_dir / meta["checkpoints"]["best"] / ckpt.WEIGHTS_FILE).is_file()
    # the learned model continues the pattern greedily
    loaded = load_run(str(run_dir), tmp_path / "runs")
    model, vocab = loaded.model, loaded.vocab
    text = generate_text(model, vocab, SampleConfig(temperature=0, length=len(PATTERN), prime="the quick"))
    assert text[0].startswith(PATTERN)


def test_reloaded_run_samples_the_same_text(corpus, tmp_path):
    run_dir, _, _ = run(corpus, tmp_path, "reload", steps=20, eval_every=20)
    config = SampleConfig(length=80, seed=11, prime="the")
    loaded = load_run(str(run_dir), tmp_path / "runs", "last")
    model, vocab = loaded.model, loaded.vocab
    loaded = load_run(str(run_dir), tmp_path / "runs", "last")
    again, vocab2 = loaded.model, loaded.vocab
    assert generate_text(model, vocab, config) == generate_text(again, vocab2, config)


def weights_of(run_dir, runs):
    model = load_run(str(run_dir), runs, "last").model
    return [w.numpy() for w in model.weights]


def test_resume_gives_the_same_weights_as_one_go(corpus, tmp_path):
    # 90 steps crosses an epoch boundary (the corpus holds 33 windows of 8 x 32 per epoch)
    # the learning-rate schedule follows the budget, so the pieces keep it flat here
    one_go, _, p1 = run(corpus, tmp_path, "one-go", steps=90, eval_every=30, lr_decay="none")
    run(corpus, tmp_path, "pieces", steps=60, eval_every=30, lr_decay="none")
    pieces, _, p2 = run(corpus, tmp_path, "pieces", resume=True, steps=90, eval_every=30)
    assert p1.step == p2.step == 90 and p1.epoch == p2.epoch >= 2
    for a, b in zip(weights_of(one_go, tmp_path / "runs"), weights_of(pieces, tmp_path / "runs")):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert [h["val_bpc"] for h in p1.history] == pytest.approx([h["val_bpc"] for h in p2.history], abs=1e-5)


def test_keep_bounds_old_checkpoints_but_keeps_the_best(corpus, tmp_path):
    run_dir, _, progress = run(corpus, tmp_path, "keep", steps=60, eval_every=10, keep=2)
    names = sorted(p.name for p in run_dir.glob("ckpt-*"))
    assert names[-2:] == [ckpt.checkpoint_name(50), ckpt.checkpoint_name(60)]
    assert progress.best_checkpoint in names and len(names) <= 3


def test_a_signal_landing_after_the_vote_waits_for_the_next_poll():
    """Workers stop on the agreed vote, not on their live flag: a signal that arrives while the
    vote is in flight must not stop this worker a step before the others (they would wait
    forever in the next step's collective)."""
    from types import SimpleNamespace

    from textgen.signals import StopRequest
    from textgen.train import Trainer

    stop = StopRequest()

    class Replicas:  # the all-reduce of the flags; the signal lands while it runs
        def any(self, flags):
            self.votes = flags
            stop.requested = stop.requested or "SIGINT"
            return [bool(f) for f in flags]

    trainer = SimpleNamespace(config=SimpleNamespace(minutes=None), replicas=Replicas(),
                              _stopping=None, _out_of_time=False)
    clock = SimpleNamespace(session_seconds=lambda: 0.0)
    Trainer._poll(trainer, stop, clock)
    assert trainer.replicas.votes == [False, False] and trainer._stopping is None  # one more step
    Trainer._poll(trainer, stop, clock)
    assert trainer.replicas.votes == [True, False] and trainer._stopping == "SIGINT"


def test_best_and_last_differ_and_pruning_keeps_the_best(corpus, tmp_path, monkeypatch):
    """Validation scripted to peak at step 20 of 60 (keep 2): the best checkpoint is ckpt-20 and
    survives pruning beside the two newest; `--checkpoint best` and `last` load different weights,
    each the one its checkpoint holds."""
    import h5py

    from textgen.train import Trainer

    scores = iter([3.0, 1.0, 2.0, 2.5, 2.6, 2.7])
    monkeypatch.setattr(Trainer, "validate", lambda self: next(scores))
    run_dir, _, progress = run(corpus, tmp_path, "best", steps=60, eval_every=10, keep=2)
    monkeypatch.undo()
    assert sorted(p.name for p in run_dir.glob("ckpt-*")) == [
        ckpt.checkpoint_name(s) for s in (20, 50, 60)]  # 10, 30 and 40 pruned; the best kept
    meta = json.loads((run_dir / RUN_FILE).read_text())
    assert meta["checkpoints"] == {"best": "ckpt-00000020", "last": "ckpt-00000060"}
    for which, step in (("best", 20), ("last", 60)):
        model = load_run(str(run_dir), tmp_path / "runs", which).model
        with h5py.File(run_dir / ckpt.checkpoint_name(step) / ckpt.WEIGHTS_FILE, "r") as f:
            saved = []
            f.visititems(lambda n, o: saved.append(o[()]) if isinstance(o, h5py.Dataset) else None)
        ours = sorted(w.numpy().tobytes() for w in model.weights)
        assert ours == sorted(np.asarray(a).tobytes() for a in saved), which
    best = [w.numpy() for w in load_run(str(run_dir), tmp_path / "runs", "best").model.weights]
    last = [w.numpy() for w in load_run(str(run_dir), tmp_path / "runs", "last").model.weights]
    assert max(float(np.abs(a - b).max()) for a, b in zip(best, last)) > 1e-3


def test_resume_with_dropout_gives_the_same_weights_as_one_go(corpus, tmp_path):
    """Dropout masks come from (seed, step, layer, row): an interrupted run draws exactly the
    masks the uninterrupted one draws."""
    model = {**TINY_MODEL, "num_layers": 2, "dropout": 0.3, "embedding_dropout": 0.2,
             "recurrent_dropout": 0.2}
    common = dict(eval_every=20, lr_decay="none", weight_decay=0.1)
    one_go, _, _ = launch([str(corpus)], model, {**TINY_TRAIN, **common, "steps": 40}, tmp_path / "runs",
                          name="drop-one", show_progress=False, echo=lambda s: None)
    launch([str(corpus)], model, {**TINY_TRAIN, **common, "steps": 20}, tmp_path / "runs",
           name="drop-pieces", show_progress=False, echo=lambda s: None)
    pieces, _, _ = run(corpus, tmp_path, "drop-pieces", resume=True, steps=40)
    for a, b in zip(weights_of(one_go, tmp_path / "runs"), weights_of(pieces, tmp_path / "runs")):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_a_second_interrupt_during_validation_aborts_with_130(corpus, tmp_path, monkeypatch):
    """The first Ctrl-C asks for a clean stop; a second one while the (long) validation runs
    aborts at once with exit code 130, and the run keeps its last complete checkpoint."""
    import os
    import signal

    from conftest import describe, invoke

    from textgen.train import Trainer

    validate = Trainer.validate

    def interrupted_validation(self):
        if self.progress.step == 20:
            os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C ...
            os.kill(os.getpid(), signal.SIGINT)  # ... and, tired of waiting, again
        return validate(self)

    monkeypatch.setattr(Trainer, "validate", interrupted_validation)
    runs = tmp_path / "runs"
    result = invoke("train", corpus, "--runs-dir", runs, "--name", "r", "--units", "16",
                    "--embedding-dim", "8", "--num-layers", "1", "--batch-size", "8",
                    "--seq-len", "32", "--steps", "40", "--eval-every", "10", "--quiet")
    monkeypatch.undo()
    assert result.exit_code == 130, describe(result)
    assert result.stderr.strip().splitlines()[-1] == (
        "Aborted by a second SIGINT; the run keeps its last complete checkpoint")
    meta = json.loads((runs / "r" / RUN_FILE).read_text())
    assert meta["checkpoints"]["last"] == "ckpt-00000010"
    assert not (runs / "r" / "train.lock").exists()
    resumed = invoke("train", "--resume", "--name", "r", "--runs-dir", runs, "--steps", "30", "--quiet")
    assert resumed.exit_code == 0 and "at step 10" in resumed.stderr, describe(resumed)


def _logged(run_dir, board: str, tag: str) -> dict[int, float]:
    """{step: value} of a scalar TensorBoard tag in `<run_dir>/<board>/`."""
    import tensorflow as tf

    values = {}
    for path in sorted((run_dir / board).glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.tag == tag:
                    values[event.step] = float(tf.make_ndarray(value.tensor))
    return values


def machine_seconds(step: int) -> float:
    """The clock of a machine that takes 120 ms a step, then 60 ms from step 75 on (as when another
    process on it finishes): exact in binary floating point at the budget's end (15 s, step 175)."""
    return (120 * min(step, 75) + 60 * max(step - 75, 0)) / 1000


def test_minutes_budget_schedule_ends_with_the_budget(corpus, tmp_path, monkeypatch):
    """Under --minutes the cosine decay reaches its floor within the last 5% of the steps the
    run actually takes, as TensorBoard logs it, even when the machine doubles its speed late in
    the run (a schedule re-estimated only at validations ended at 163 of 175); training and
    validation log the same bits-per-character tag side by side. The clock is the step's (an
    injected `Trainer.now`), so the run is the same on any machine under any load."""
    from textgen.train import Trainer

    monkeypatch.setattr(Trainer, "now", lambda self: machine_seconds(self.progress.step))
    run_dir, reason, progress = run(corpus, tmp_path, "timed", minutes=0.25, eval_every=50,
                                    warmup_steps=10, learning_rate=1e-2, min_lr_ratio=0.1)
    assert reason == "budget"
    learning_rates = _logged(run_dir, "train", "learning_rate")
    steps = progress.step
    assert steps == 175 and max(learning_rates) >= 0.95 * steps, (steps, max(learning_rates))
    floor = 1e-3
    final = learning_rates[max(learning_rates)]
    assert final == pytest.approx(floor, rel=1e-3)  # the decay ended ...
    assert 0.95 * steps <= progress.schedule_steps <= steps, progress.schedule_steps  # ... in the last 5%
    # and it did not decay early: a cosine over the whole run is still above half the peak at its
    # middle (the old estimate, fixed from the first 20 steps, reached the floor at a quarter)
    first_half = [lr for s, lr in learning_rates.items() if s <= 0.5 * steps]
    assert min(first_half) > 0.3 * 1e-2, learning_rates
    train_bpc = _logged(run_dir, "train", "bits_per_char")
    val_bpc = _logged(run_dir, "validation", "bits_per_char")
    assert len(train_bpc) >= steps // 10 - 1 and sorted(val_bpc)[-1] == steps
    assert abs(val_bpc[steps] - progress.history[-1]["val_bpc"]) < 1e-6
    forget_saturated = _logged(run_dir, "validation", "gates/layer_0/forget_gate_above_0.9")
    assert sorted(forget_saturated) == sorted(val_bpc) and all(0 <= v <= 1 for v in forget_saturated.values())


@pytest.mark.parametrize("shortlist", [0, 2], ids=["one-softmax", "two-level"])
def test_unigram_head_bias_starts_the_model_at_the_character_frequencies(tmp_path, shortlist):
    import math
    from collections import Counter

    text = "".join(("aaaaaaab" if i % 3 else "abbcd ") for i in range(600))  # skewed frequencies
    path = tmp_path / "skewed.txt"
    path.write_text(text)
    run_dir, _, _ = launch([str(path)], {**TINY_MODEL, "head_shortlist": shortlist},
                           {**TINY_TRAIN, "steps": 1, "learning_rate": 1e-9, "head_bias": "unigram",
                            "eval_every": 1}, tmp_path / "runs", name="prior", show_progress=False,
                           echo=lambda s: None)
    loaded = load_run(str(run_dir), tmp_path / "runs")
    counts = Counter(text[: len(text) - int(len(text) * TINY_TRAIN.get("val_fraction", 0.1))])
    total = sum(counts.values()) + loaded.vocab.size
    expected = [math.log((counts[ch] + 1) / total) for ch in loaded.vocab.chars]
    zero_output = np.zeros((1, TINY_MODEL["units"]), np.float32)  # the biases alone
    np.testing.assert_allclose(loaded.model.logits(zero_output).numpy()[0], expected, atol=0.02)
    if shortlist:  # the two-level head's shortlist is the most frequent characters: a, then b
        assert loaded.model.shortlist == 2
        assert loaded.vocab.decode(loaded.model.frequency_order.numpy()[:2]) == "ab"
    assert json.loads((run_dir / RUN_FILE).read_text())["train"]["head_bias"] == "unigram"
    # what that buys: the first validation is already near the unigram entropy, far below uniform
    unigram_bits = -sum(c / sum(counts.values()) * math.log2(c / sum(counts.values())) for c in counts.values())
    first = json.loads((run_dir / RUN_FILE).read_text())["history"][0]["val_bpc"]
    assert abs(first - unigram_bits) < 0.25 and first < math.log2(loaded.vocab.size) - 0.5
