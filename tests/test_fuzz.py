"""Fuzzing the command line (hypothesis): whatever bytes the corpus holds and whatever values the
options get, no traceback ever escapes `textgen train` or `textgen sample`, and every failure is
one of the documented forms:

* a TextgenError: exit code 2 and one `Error: ...` line on stderr, which is the last line; the
  only lines allowed before it are the status lines `training ...` / `resuming ...` (a failure
  after training started, e.g. a divergence) and `skipped ...` (files of a corpus directory);
* a click usage error: exit code 2, `Usage: ...`, then `Error: ...` as the last line.

Bounded: derandomized, `max_examples` 30-40 per test, and at most TRAINING_BUDGET examples per
test may build a Trainer (SAMPLING_BUDGET a Sampler): further ones are discarded before any
TensorFlow work, so most examples exercise the validation that happens before TensorFlow.
"""

from __future__ import annotations

import itertools
import shutil

import pytest
from conftest import CORPUS_TEXT, describe, invoke, tree_hashes
from hypothesis import HealthCheck, event, given, reject, settings
from hypothesis import strategies as st

import textgen.sample
from textgen import checkpoint as ckpt
from textgen import runs
from textgen.inference import load_run
from textgen.train import Trainer

pytestmark = pytest.mark.usefixtures("own_cwd")

TRAINING_BUDGET = 4  # examples per test that may build a Trainer
SAMPLING_BUDGET = 6  # examples that may compile a sampler
STATUS_LINES = ("training ", "resuming ", "skipped ")  # skipped: files of a corpus directory
TINY = ["--units", "8", "--embedding-dim", "4", "--num-layers", "1", "--batch-size", "2",
        "--seq-len", "8", "--eval-every", "1", "--eval-batches", "1", "--quiet"]
FUZZ = settings(max_examples=30, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much,
                                       HealthCheck.too_slow])
_names = itertools.count()


class OverBudget(Exception):
    """Raised instead of doing TensorFlow work once the test's budget is spent."""


def _limit(monkeypatch, cls, limit: int):
    """Past `limit` constructions, `cls()` raises OverBudget (before any TensorFlow work). A
    generator fixture body: once the test's examples ran, the budget must have been spent, so that
    the fuzzing reached TensorFlow `limit` times and did not stop at the validation before it."""
    real = cls.__init__
    count = [0]

    def init(self, *args, **kwargs):
        count[0] += 1
        if count[0] > limit:
            raise OverBudget
        real(self, *args, **kwargs)

    monkeypatch.setattr(cls, "__init__", init)
    yield
    print(f"\n{cls.__name__} reached by {min(count[0], limit)} examples of the budget's {limit} "
          f"({count[0]} tried)")
    assert count[0] >= limit, f"only {count[0]} of the examples reached {cls.__name__} (budget {limit})"


@pytest.fixture
def training_budget(monkeypatch):
    yield from _limit(monkeypatch, Trainer, TRAINING_BUDGET)


@pytest.fixture
def sampling_budget(monkeypatch):
    yield from _limit(monkeypatch, textgen.sample.Sampler, SAMPLING_BUDGET)


def check(result) -> None:
    """The properties every invocation must have; discards examples that ran over budget."""
    if isinstance(result.exception, OverBudget):
        reject()
    info = describe(result)
    last = (result.stderr.strip().splitlines() or [""])[-1]
    event(f"exit {result.exit_code}: {' '.join(last.split()[:4])[:50]}")  # for --hypothesis-show-statistics
    assert result.exception is None or isinstance(result.exception, SystemExit), info
    assert "Traceback" not in result.stdout + result.stderr, info
    if result.exit_code == 0:
        return
    assert result.exit_code == 2, info
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("Error: "), info
    if lines[0].startswith("Usage: "):  # click's usage error
        return
    assert [line for line in lines if line.startswith("Error: ")] == lines[-1:], info
    assert all(line.startswith(STATUS_LINES) for line in lines[:-1]), info


def assert_loads_if_created(run_dir) -> None:
    """A run left behind (also by a failure after training started) loads for sampling."""
    if (run_dir / "run.json").exists():
        loaded = load_run(str(run_dir), run_dir.parent, "best")
        model, vocab = loaded.model, loaded.vocab
        assert vocab.size == model.config.vocab_size


# ---------------------------------------------------------------------------- corpus bytes

CORPUS_BYTES = st.one_of(
    st.binary(max_size=300),  # mostly invalid UTF-8, NULs
    st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")),  # lone surrogates too
    st.text(st.characters(blacklist_categories=["Cs"]), min_size=90, max_size=400)
    .map(lambda t: t.encode("utf-8")),  # long enough to train
    st.builds(lambda piece, n: piece * n, st.binary(min_size=1, max_size=6), st.integers(1, 120)),
    st.sampled_from([b"", b"\x00", b"\n", b"\xef\xbb\xbf", b"\xef\xbb\xbfhi\n" * 40, b"\r\n" * 90,
                     b"\xff\xfe" + "hello world\n".encode("utf-16-le") * 10, b"\xc3" * 200,
                     "Grüße, 世界 🙂\n".encode() * 12, b"a\x00b" * 50, b"\x80abc" * 40]),
)
ENCODINGS = st.sampled_from(["utf-8", "utf-8", "latin-1", "utf-16", "ascii", "cp1252", "utf-32", "rot13"])


@FUZZ
@given(data=CORPUS_BYTES, encoding=ENCODINGS, as_dir=st.booleans())
def test_train_on_any_corpus_bytes(data, encoding, as_dir, tmp_path, training_budget):
    name = f"c{next(_names)}"
    folder = tmp_path / name
    folder.mkdir()
    (folder / "corpus.txt").write_bytes(data)
    if as_dir:
        (folder / "more.bin").write_bytes(data[::-1])
    target = folder if as_dir else folder / "corpus.txt"
    result = invoke("train", target, "--runs-dir", tmp_path / "runs", "--name", name,
                    "--encoding", encoding, "--steps", 1, *TINY)
    check(result)
    assert_loads_if_created(tmp_path / "runs" / name)


# ---------------------------------------------------------------------------- option values

NUMBERS = st.one_of(
    st.integers(-3, 40).map(str),
    st.sampled_from(["0", "-1", "1", "2147483648", str(2**63), str(10**30), "1e3", "1.5", "nan", "NaN",
                     "inf", "-inf", "", " ", "abc", "0x10", "1_000", "\u0663", "--steps", "1e-320"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(min_value=1e-9, max_value=1e3).map(repr),
)
TRAIN_OPTIONS = ["--units", "--embedding-dim", "--num-layers", "--batch-size", "--seq-len", "--eval-every",
                 "--eval-batches", "--keep", "--seed", "--steps", "--epochs", "--learning-rate", "--dropout",
                 "--clip-norm", "--val-fraction", "--minutes", "--encoding", "--name"]


@FUZZ
@given(options=st.lists(st.tuples(st.sampled_from(TRAIN_OPTIONS), NUMBERS), min_size=1, max_size=3),
       resume=st.booleans())
def test_train_with_any_option_values(options, resume, corpus_file, trained_run, tmp_path,
                                      training_budget):
    runs = tmp_path / f"runs{next(_names)}"
    args = [a for pair in options for a in pair]
    # a bounded budget always applies: --steps 1 last, or a few milliseconds if --steps is fuzzed
    guard = ["--minutes", "0.005"] if "--steps" in args else ["--steps", "4" if resume else "1"]
    if resume:
        shutil.copytree(trained_run, runs / trained_run.name)
        result = invoke("train", "--resume", "--name", trained_run.name, "--runs-dir", runs, "--quiet",
                        *args, *guard)
    else:
        result = invoke("train", corpus_file, "--runs-dir", runs, "--name", "r", *TINY, *args, *guard)
    check(result)
    for run_dir in runs.glob("*") if runs.exists() else []:
        if not run_dir.name.startswith("."):
            assert_loads_if_created(run_dir)


SAMPLE_NUMBERS = st.one_of(  # no large valid lengths or sample counts: they are slow, not wrong
    st.integers(-3, 12).map(str),
    st.sampled_from(["0", "-1", "2147483648", str(10**30), "nan", "inf", "-inf", "", "abc", "1e3", "0.5",
                     "1e-45", "1e38", "-0.0", "10001"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
SAMPLE_OPTIONS = st.one_of(
    st.tuples(st.sampled_from(["--temp", "--length", "--seed", "--top-k", "--top-p", "--num-samples"]),
              SAMPLE_NUMBERS),
    st.tuples(st.just("--prime"), st.text(max_size=12)),
    st.tuples(st.just("--prime"), st.text(alphabet=sorted(set(CORPUS_TEXT)), max_size=12)),
    st.tuples(st.just("--checkpoint"), st.sampled_from(["best", "last", "worst", ""])),
)


@settings(FUZZ, max_examples=40)
@given(options=st.lists(SAMPLE_OPTIONS, min_size=1, max_size=4))
def test_sample_with_any_option_values(options, trained_run, sampling_budget):
    before = tree_hashes(trained_run)
    args = [a for pair in options for a in pair if "\0" not in a]
    if "--length" not in args:
        args = ["--length", "5", *args]
    result = invoke("sample", trained_run.name, "--runs-dir", trained_run.parent, *args)
    check(result)
    assert tree_hashes(trained_run) == before, "sampling changed the run directory"
