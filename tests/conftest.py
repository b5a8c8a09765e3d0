"""Shared fixtures for the CLI tests: a small regular corpus, one tiny trained run (trained once
per session through the CLI and only read by the tests that share it), and helpers.

Every CLI call goes through `click.testing.CliRunner` against `textgen.cli.main` with an explicit
`--runs-dir`, and every CLI test runs in its own temporary working directory (`own_cwd`), so
nothing lands in the project's `checkpoints/` or `corpora/`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# `--precision auto` on a CPU depends on its flags (mixed bfloat16 with native bfloat16): the suite
# pins it to float32 on any CPU, for its own processes and the textgen processes they start, so
# results compared with float32 references do not depend on the host (textgen.precision)
os.environ["TEXTGEN_CPU_FLAGS"] = ""

import pytest
import tensorflow as tf
from click.testing import CliRunner

# Two logical CPU devices, so MirroredStrategy has two replicas to split batches across on a
# machine without GPUs. Must happen before TensorFlow initialises its devices (here, at collection).
LOGICAL_CPUS = 2
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration()] * LOGICAL_CPUS)

from textgen.cli import main

# The smallest model and budget that still exercise the whole pipeline.
TINY = [
    "--units", "16", "--embedding-dim", "8", "--num-layers", "1", "--batch-size", "4",
    "--seq-len", "16", "--steps", "3", "--eval-every", "3", "--quiet",
]
# Headless Chromium for the page tests (viz, serve): Debian's package, which the README's test
# command installs (tests/setup-browser.sh), driven by Playwright's Python API
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
CORPUS_LINE = "the cat sat on the mat\n"
CORPUS_TEXT = CORPUS_LINE * 130  # 2,990 characters, vocabulary of 11
RUN_NAME = "tiny"


def invoke(*args, **kwargs):
    """Run `textgen <args>` in-process; stdout and stderr are kept apart."""
    args = [str(a) for a in args]
    return CliRunner().invoke(main, args, catch_exceptions=True, **kwargs)


def tree_hashes(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file below `root` (an empty dict if it does not exist)."""
    root = Path(root)
    if not root.exists():
        return {}
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def describe(result) -> str:
    """Everything about a CliRunner result, for assertion messages."""
    exc = result.exception
    tb = ""
    if exc is not None and not isinstance(exc, SystemExit):
        import traceback

        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return (f"exit code {result.exit_code}\n--- stdout ---\n{result.stdout}\n"
            f"--- stderr ---\n{result.stderr}\n--- exception ---\n{exc!r}\n{tb}")


@pytest.fixture
def own_cwd(tmp_path, monkeypatch):
    """Run the test in its own directory, so the CLI's relative `corpora/` cache lands there.
    Used by every test of test_cli.py and test_errors.py (`pytestmark`); not autouse, so the
    other test modules keep their working directory."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    """A small, regular UTF-8 corpus ('the cat sat on the mat' repeated)."""
    path = tmp_path_factory.mktemp("corpus") / "cat.txt"
    path.write_text(CORPUS_TEXT, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, corpus_file) -> Path:
    """A tiny run, trained once through the CLI: `<runs>/tiny`. Read it; never modify it
    (copy it with `copy_run` first)."""
    base = tmp_path_factory.mktemp("session-run")
    runs = base / "runs"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(base)
        result = invoke("train", corpus_file, "--runs-dir", runs, "--name", RUN_NAME, *TINY)
    assert result.exit_code == 0, describe(result)
    run_dir = runs / RUN_NAME
    assert (run_dir / "run.json").is_file(), describe(result)
    return run_dir


@pytest.fixture
def copy_run(trained_run, tmp_path):
    """A fresh copy of the session run, `<tmp>/runs/tiny`, for tests that may change it."""

    def make(name: str = RUN_NAME) -> Path:
        target = tmp_path / "runs" / name
        shutil.copytree(trained_run, target)
        return target

    return make


@pytest.fixture(autouse=True, scope="session")
def _full_precision_float32():
    """Tests pin float32 results to 1e-5; on Ampere+ GPUs TF defaults to TF32 matmuls (~1e-3
    relative), so TF32 is off for the whole suite (a no-op on CPU)."""
    import tensorflow as tf

    previous = tf.config.experimental.tensor_float_32_execution_enabled()
    tf.config.experimental.enable_tensor_float_32_execution(False)
    yield
    tf.config.experimental.enable_tensor_float_32_execution(previous)
