"""`textgen viz` speed and size: 20,000 characters of Python source through a 2 x 256 model.

Side by side in one run, alternating over `--repeats`:

  trace   `trace_text(model, vocab, text)`: i, f, C~, o, C, h of every unit and layer, the top-5
          guesses and the surprisal, for every character (windows of 512, state carried)
  eval    `textgen.evaluate.evaluate(model, vocab, [text], window=512)`: the same characters
          through the model's own forward pass (what `textgen eval` does), recording nothing

reported as median seconds and the median per-repeat ratio trace / eval; the compilation of the
window with XLA (the first call for a model, on one window) is reported on its own. Then the
page under the default 10 MB budget: bytes, the precision and number of characters it holds, the
seconds to write it, and (with Playwright and /usr/bin/chromium) the seconds headless Chromium
takes to open it and to recolour every character for another unit. Random weights by default;
`--run` adds a trained run's weights (a trained model's gates are less regular, so its page is
larger).

    python bench/viz_speed.py
    python bench/viz_speed.py --run small --runs-dir checkpoints --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CHARS = 20_000
SOURCES = ("argparse.py", "ast.py", "dataclasses.py")  # standard-library files, read in order
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def source_text(chars: int) -> str:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return "".join((stdlib / name).read_text(encoding="utf-8") for name in SOURCES)[:chars]


def random_model(text: str):
    import keras

    from textgen.config import ModelConfig
    from textgen.model import build_model
    from textgen.vocab import Vocabulary

    vocab = Vocabulary.from_text(text)
    keras.utils.set_random_seed(0)
    return build_model(ModelConfig(vocab_size=vocab.size, embedding_dim=64, units=256, num_layers=2)), vocab


def time_trace_and_eval(model, vocab, text: str, repeats: int) -> dict:
    from textgen.evaluate import evaluate
    from textgen.trace import trace_text

    start = time.perf_counter()
    trace_text(model, vocab, text[:512])  # one window: XLA compiles it, once per model and process
    first = time.perf_counter() - start
    evaluate(model, vocab, [text], window=512)  # its compilation, outside the timing
    traces, evals = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        trace = trace_text(model, vocab, text)
        traces.append(time.perf_counter() - start)
        start = time.perf_counter()
        evaluate(model, vocab, [text], window=512)
        evals.append(time.perf_counter() - start)
    return {"trace": trace, "first": first, "trace_s": statistics.median(traces),
            "eval_s": statistics.median(evals),
            "ratio": statistics.median(t / e for t, e in zip(traces, evals))}


def write_page(trace, name: str, folder: Path) -> tuple[Path, float]:
    from textgen.config import VizConfig
    from textgen.viz.command import describe_trace, write_trace

    path = folder / f"{name}.html"
    start = time.perf_counter()
    write_trace(trace, describe_trace(trace, name, "-", "bench", []), path, VizConfig())
    return path, time.perf_counter() - start


def browser_times(path: Path) -> tuple[float, float] | None:
    """(seconds to open the page until it is ready, milliseconds to recolour for another unit)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        start = time.perf_counter()
        page.goto(path.as_uri())
        page.wait_for_selector("body[data-ready=true]", timeout=120_000)
        opened = time.perf_counter() - start
        page.select_option("#quantity", "c")
        recolour = page.evaluate("""async () => {
            const unit = document.getElementById("unit"), start = performance.now();
            unit.value = 5;
            unit.dispatchEvent(new Event("input"));
            await new Promise((done) => requestAnimationFrame(() => setTimeout(done, 0)));
            return performance.now() - start;
        }""")
        browser.close()
    return opened, recolour


def report(label: str, model, vocab, text: str, repeats: int, folder: Path) -> None:
    from textgen.viz.page import page_template  # noqa: F401  (fails early if package data is missing)
    from textgen.viz.page import BITS

    timing = time_trace_and_eval(model, vocab, text, repeats)
    trace = timing["trace"]
    path, seconds = write_page(trace, label.split()[0], folder)
    header_bits, header_length = _page_shape(path)
    print(f"\n{label}: {len(trace):,} characters, {len(trace.layers)} x {trace.layers[0]['h'].shape[1]}")
    total = timing["first"] + timing["trace_s"]
    print(f"  trace  {timing['trace_s']:.2f} s (median)   target < 5 s: "
          f"{'PASS' if timing['trace_s'] < 5 else 'FAIL'}; with the first window's XLA compilation "
          f"({timing['first']:.2f} s, once per model and process) {total:.2f} s: "
          f"{'PASS' if total < 5 else 'FAIL'}")
    print(f"  eval   {timing['eval_s']:.2f} s (median)   trace / eval = {timing['ratio']:.2f}")
    size = path.stat().st_size
    print(f"  page   {size / 1e6:.2f} MB   target < 10 MB: {'PASS' if size < 10e6 else 'FAIL'}   "
          f"{header_bits} bits a value ({', '.join(map(str, BITS))} tried), {header_length:,} of "
          f"{len(trace):,} characters, written in {seconds:.2f} s")
    times = browser_times(path)
    if times:
        print(f"  chromium: open {times[0]:.2f} s, recolour {header_length:,} characters {times[1]:.0f} ms")


def _page_shape(path: Path) -> tuple[int, int]:
    import json
    import re

    html = path.read_text(encoding="utf-8")
    header = json.loads(re.search(r'id="header">(.*?)</script>', html, re.S)[1])
    return header["bits"], header["length"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chars", type=int, default=CHARS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--run", help="also a trained run (name or path)")
    parser.add_argument("--runs-dir", default="checkpoints")
    args = parser.parse_args()
    text = source_text(args.chars)
    with tempfile.TemporaryDirectory() as folder:
        model, vocab = random_model(text)
        report("random weights", model, vocab, text, args.repeats, Path(folder))
        if args.run:
            from textgen.inference import load_run
            from textgen.trace import known_text

            loaded = load_run(args.run, args.runs_dir)
            known, _ = known_text(loaded.vocab, text)
            report(f"trained run {loaded.name}", loaded.model, loaded.vocab, known, args.repeats,
                   Path(folder))


if __name__ == "__main__":
    main()
