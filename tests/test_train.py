"""Training: a tiny run learns a regular corpus, state is carried, checkpoints reload and resume."""

import json

import numpy as np
import pytest

from textgen import checkpoint as ckpt
from textgen.runs import RUN_FILE
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

    from textgen.launch import StopRequest
    from textgen.train import Trainer

    stop = StopRequest()

    class Replicas:  # the all-reduce of the flags; the signal lands while it runs
        def any(self, flags):
            self.votes = flags
            stop.requested = stop.requested or "SIGINT"
            return [bool(f) for f in flags]

    trainer = SimpleNamespace(config=SimpleNamespace(minutes=None), replicas=Replicas(),
                              _stopping=None, _out_of_time=False)
    Trainer._poll(trainer, stop, session_start=0.0)
    assert trainer.replicas.votes == [False, False] and trainer._stopping is None  # one more step
    Trainer._poll(trainer, stop, session_start=0.0)
    assert trainer.replicas.votes == [True, False] and trainer._stopping == "SIGINT"
