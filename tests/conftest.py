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
# A fontconfig that hides every font holding a Han character (U+4E2D), as on a machine with no CJK
# font: Chromium started with it (FONTCONFIG_FILE) must show the pages' missing-font hint.
NO_CJK_FONTCONFIG = """<?xml version="1.0"?>
<!DOCTYPE fontconfig SYSTEM "fonts.dtd">
<fontconfig>
  <include ignore_missing="yes">/etc/fonts/fonts.conf</include>
  <selectfont><rejectfont><pattern>
    <patelt name="charset"><charset><int>0x4e2d</int></charset></patelt>
  </pattern></rejectfont></selectfont>
</fontconfig>
"""
CORPUS_LINE = "the cat sat on the mat\n"
CORPUS_TEXT = CORPUS_LINE * 130  # 2,990 characters, vocabulary of 11
RUN_NAME = "tiny"


def chromium_env_without_cjk(folder: Path) -> dict:
    """The environment for a Chromium that sees no CJK font (NO_CJK_FONTCONFIG written to `folder`)."""
    config = Path(folder) / "no-cjk-fonts.conf"
    config.write_text(NO_CJK_FONTCONFIG, encoding="utf-8")
    return {**os.environ, "FONTCONFIG_FILE": str(config)}


# What the browser tests read of a character's span: its width and its line's height (a Han
# character is two columns of a monospace font wide; the missing-glyph box of one that has no
# font, one column) and its background colour as [r, g, b].
SPAN_BOX = """span => { const box = span.getBoundingClientRect();
  const rgb = getComputedStyle(span).backgroundColor.match(/\\d+/g).slice(0, 3).map(Number);
  return [box.width, box.height, rgb]; }"""
HAN = "\u4e00\u4e8c\u4e09\u5927\u5c0f\u4eba\u5929\u5730\u5c71\u6c34\u65e5\u6708\u706b\u6728\u91d1\u571f" \
      "\u98ce\u96e8\u82b1\u8349\u4e66\u751f\u5b66\u6587\u4e2d\u56fd\u5bb6\u5fc3\u8bf4\u770b"  # 30 in all


def assert_card_beside(page, card: str, span: str) -> None:
    """The hover card `card` shows, keeps each of its likeliest characters on one line, and does not
    cover the hovered character `span` nor the rest of its line."""
    box = page.locator(card).bounding_box()
    under = page.locator(span).bounding_box()
    assert box and under and box["height"] > 20
    assert box["y"] >= under["y"] + under["height"] or box["y"] + box["height"] <= under["y"], (box, under)
    lines = page.eval_on_selector_all(f"{card} .guess", "gs => gs.map(g => g.getClientRects().length)")
    assert lines and set(lines) == {1}, lines


def han_to_latin_width(page, container: str) -> float:
    """How many Latin characters wide a Han character of the text in `container` is (about 2 where
    a CJK font draws it, 1 for the missing-glyph box of the Latin monospace font)."""
    han = page.locator(f"{container} span", has_text="\u4e2d").first.bounding_box()["width"]
    latin = page.evaluate("""(container) => { const probe = document.createElement("span");
      probe.textContent = "MMMM"; document.querySelector(container).appendChild(probe);
      const w = probe.getBoundingClientRect().width / 4; probe.remove(); return w; }""", container)
    return han / latin


def chinese_corpus(chars: int = 4000, seed: int = 0) -> str:
    """Generated Chinese: sentences of Han characters that end in \u3002 \uff01 or \uff1f, with
    \u300c\u300d quotes, \u300a\u300b titles and \uff08\uff09 asides, a few per line."""
    import random

    rng = random.Random(seed)

    def words(low, high):
        return "".join(rng.choice(HAN) for _ in range(rng.randint(low, high)))

    lines, n = [], 0
    while n < chars:
        sentences = []
        for _ in range(rng.randint(1, 3)):
            kind = rng.random()
            if kind < 0.3:
                body = f"{words(1, 3)}\u8bf4\uff1a\u300c{words(3, 9)}\u300d"
            elif kind < 0.5:
                body = f"{words(2, 4)}\u770b\u300a{words(2, 5)}\u300b{words(1, 4)}"
            elif kind < 0.6:
                body = f"{words(2, 5)}\uff08{words(1, 4)}\uff09{words(1, 3)}"
            else:
                body = f"{words(3, 8)}\uff0c{words(2, 8)}"
            sentences.append(body + rng.choice("\u3002\u3002\u3002\uff01\uff1f"))
        line = "".join(sentences) + "\n"
        lines.append(line)
        n += len(line)
    return "".join(lines)


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


def train_run(base: Path, corpus: Path, name: str, options=TINY) -> Path:
    """`textgen train CORPUS --runs-dir BASE/runs --name NAME OPTIONS` through the CLI, run in
    BASE (so no cache lands in the repository); the run directory, asserted trained."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(base)
        result = invoke("train", corpus, "--runs-dir", base / "runs", "--name", name, *options)
    assert result.exit_code == 0, describe(result)
    run_dir = base / "runs" / name
    assert (run_dir / "run.json").is_file(), describe(result)
    return run_dir


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, corpus_file) -> Path:
    """A tiny run, trained once through the CLI: `<runs>/tiny`. Read it; never modify it
    (copy it with `copy_run` first)."""
    return train_run(tmp_path_factory.mktemp("session-run"), corpus_file, RUN_NAME)


@pytest.fixture(scope="session")
def chinese_run(tmp_path_factory) -> Path:
    """A tiny run trained once on `chinese_corpus`: `<runs>/han`, for the pages' Chinese tests."""
    base = tmp_path_factory.mktemp("han-run")
    corpus = base / "han.txt"
    corpus.write_text(chinese_corpus(), encoding="utf-8")
    return train_run(base, corpus, "han")


@pytest.fixture
def copy_run(trained_run, tmp_path):
    """A fresh copy of the session run, `<tmp>/runs/tiny`, for tests that may change it."""

    def make(name: str = RUN_NAME) -> Path:
        target = tmp_path / "runs" / name
        shutil.copytree(trained_run, target)
        return target

    return make


# The files whose tests take longest, longest first. `pytest -n 2 --dist loadfile` (the README's
# command) hands whole files to its two processes in collection order, alphabetical by default:
# a long file collected late (test_serve_app, test_train, test_viz_command) would run alone at the
# end while the other process sits idle. Collected first, the long files overlap and the short
# ones fill in around them. Only the order changes; a file not listed keeps its place after these.
LONGEST_FIRST = [  # by measured time, longest first (a full run with --durations, 2026-12-07)
    "test_faults.py", "test_distribute.py", "test_export_command.py", "test_cells_downstream.py",
    "test_errors.py", "test_cells_cli.py", "test_checkpoint.py", "test_examples.py", "test_precision.py",
    "test_finetune.py", "test_serve_app.py", "test_train.py", "test_cli.py", "test_viz_command.py",
    "test_seed_agreement.py", "test_fuzz.py", "test_sample.py", "test_serve_command.py",
    "test_serve_access.py", "test_model.py", "test_packaging.py", "test_recipe.py",
]


def pytest_collection_modifyitems(items):
    """Long files first (LONGEST_FIRST); within a file, the tests keep their order."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable


@pytest.fixture(autouse=True, scope="session")
def _full_precision_float32():
    """Tests pin float32 results to 1e-5; on Ampere+ GPUs TF defaults to TF32 matmuls (~1e-3
    relative), so TF32 is off for the whole suite (a no-op on CPU)."""
    import tensorflow as tf

    previous = tf.config.experimental.tensor_float_32_execution_enabled()
    tf.config.experimental.enable_tensor_float_32_execution(False)
    yield
    tf.config.experimental.enable_tensor_float_32_execution(previous)
