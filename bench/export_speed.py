"""Export sizes and one-stream generation speed of each export runtime, beside `textgen sample`.

A run of the `small` preset's shape (embedding 64 -> 2 x 256 LSTM -> 65 logits) is trained for
one step through the CLI, then exported with `textgen export` in every format (timed). Each
export is driven by its own example script's `TextGenerator` (examples/export_*.py: the code a
user copies), in this one process:

  step      one `TextGenerator.step(id)` call: one character in, logits and states out, batch 1,
            through the runtime's Python API (median over `--steps` calls)
  generate  `TextGenerator.generate(prime, --chars, temperature 0)`: 1-stream greedy characters
            per second (LiteRT/ONNX/Keras: the example's Python loop over `step`; SavedModel: its
            `generate` signature, the loop inside the graph)
  textgen   `textgen sample`'s sampler (`Sampler.generate`, XLA-compiled 64-character chunks),
            1 stream, temperature 0, the same number of characters

The contenders alternate over `--repeats` rounds; reported are medians and each one's ratio to
textgen's characters/second.

    python bench/export_speed.py                  # 2000 characters, 3 rounds
    python bench/export_speed.py --chars 500 --repeats 2
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import runpy
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORMATS = {"savedmodel": [], "litert": [], "litert-int8": ["--quantize", "dynamic"], "onnx": [], "keras": []}
CORPUS = "".join(chr(c) for c in range(32, 97)) * 200  # 65 distinct characters


def cli(*args) -> float:
    """Run `textgen ARGS` in this process; seconds taken."""
    from textgen.cli import main

    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        main([str(a) for a in args], standalone_mode=False)
    return time.perf_counter() - start


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.suffix not in (".md", ".json"))


def median_step_seconds(generator, steps: int) -> float:
    times = []
    for i in range(steps):
        start = time.perf_counter()
        generator.step(i % 65)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chars", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, str(ROOT))
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # each export traces its own functions: no retracing notices
    work = Path(tempfile.mkdtemp(prefix="export-speed-"))
    (work / "corpus.txt").write_text(CORPUS, encoding="utf-8")
    cli("train", work / "corpus.txt", "--runs-dir", work / "runs", "--name", "small", "--preset", "small",
        "--steps", "1", "--batch-size", "4", "--seq-len", "32", "--eval-every", "1", "--quiet")
    run = work / "runs" / "small"
    export_seconds, generators = {}, {}
    for name, options in FORMATS.items():
        out = work / name
        export_seconds[name] = cli("export", run, "--runs-dir", work / "runs", "--format", name.split("-")[0],
                                   "--out", out, *options)
        example = runpy.run_path(str(ROOT / "examples" / f"export_{name.split('-')[0]}.py"))
        generators[name] = example["TextGenerator"](str(out))
    # onnxruntime's default pool has a thread per core; one stream's small matmuls may do better on one
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    example = runpy.run_path(str(ROOT / "examples" / "export_onnx.py"))
    one_thread = example["TextGenerator"](str(work / "onnx"))
    one_thread.session = onnxruntime.InferenceSession(str(work / "onnx" / "model.onnx"), options)
    generators["onnx, 1 thread"] = one_thread

    from textgen.config import SampleConfig
    from textgen.inference import load_run
    from textgen.sample import Sampler, generate_text

    loaded = load_run(run, work / "runs")
    config = SampleConfig(temperature=0.0, length=args.chars, prime="A")
    sampler = Sampler(loaded.model)
    generate_text(loaded.model, loaded.vocab, config, sampler=sampler)  # compile once
    rates = {name: [] for name in ["textgen sample", *generators]}
    steps = {name: [] for name in generators}
    for _ in range(args.repeats):
        start = time.perf_counter()
        generate_text(loaded.model, loaded.vocab, config, sampler=sampler)
        rates["textgen sample"].append(args.chars / (time.perf_counter() - start))
        for name, generator in generators.items():
            steps[name].append(median_step_seconds(generator, args.steps))
            start = time.perf_counter()
            generator.generate("A", args.chars)
            rates[name].append(args.chars / (time.perf_counter() - start))
    base = statistics.median(rates["textgen sample"])
    print(f"model: small preset shape, 2 x 256, embedding 64, vocabulary 65; {args.chars} characters, "
          f"{args.repeats} rounds")
    print("| runtime | export | files | export time | step latency | 1-stream chars/s | vs textgen sample |")
    print("|---|---|---:|---:|---:|---:|---:|")
    print(f"| textgen sample (XLA) | – | – | – | – | {base:,.0f} | 1.00x |")
    for name in generators:
        rate, export = statistics.median(rates[name]), name.split(",")[0]
        size = f"{tree_bytes(work / export) / 1e6:.2f} MB" if export in FORMATS else "–"
        seconds = f"{export_seconds[export]:.1f} s" if export in FORMATS else "–"
        print(f"| {name} | `--format {export.split('-')[0]}{' --quantize dynamic' if '-' in export else ''}` "
              f"| {size} | {seconds} | {statistics.median(steps[name]) * 1e6:,.0f} µs | {rate:,.0f} "
              f"| {rate / base:.2f}x |")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
