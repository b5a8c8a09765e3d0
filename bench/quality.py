"""Text quality at a time budget: held-out bits per character of textgen, and of a plain PyTorch
LSTM trained the same minutes on the same split, side by side.

nanoGPT's split: the first 90% of the corpus trains, the last 10% is held out. textgen runs as a
user runs it — `textgen train CORPUS --minutes M --val-fraction 0.1 [--preset P] [options]`, then
`textgen eval` of the checkpoint `textgen sample` would load (the best) on the held-out 10%, one
stream with the state carried through the whole text. The reference (bench/torch_reference.py:
nn.Embedding -> nn.LSTM -> nn.Linear, Adam 2e-3 constant, clip 5, batch 64 x 100, the same
shape) trains the same minutes on the same 90%, keeps its best weights by the same validation,
and is scored on the same held-out text the same way. Both use the vocabulary of the whole file,
so characters that occur only in the held-out part count alike (as untrained ones). The two run
one after the other, each with the whole machine.

    python bench/quality.py --minutes 10 --preset small
    python bench/quality.py --corpus ../shared/corpora/songci.txt --minutes 5 --reference
    python bench/quality.py --minutes 30 --preset small -- --dropout 0.2   # extra train options
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE.parents[1] / "shared" / "corpora" / "tinyshakespeare.txt"


def cpu_model() -> str:
    """The CPU's model name and whether it multiplies bfloat16 natively (for the record)."""
    from textgen.precision import cpu_bf16

    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        name = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        name = "unknown CPU"
    return f"{name}, native bfloat16: {'yes' if cpu_bf16() else 'no'}"


def run_textgen(corpus: Path, minutes: float, preset: str | None, extra: list[str],
                workdir: Path, held_out: Path) -> dict:
    runs = workdir / "runs"
    train = ["textgen", "train", str(corpus), "--val-fraction", "0.1", "--minutes", str(minutes),
             "--runs-dir", str(runs), "--name", "quality", "--quiet",
             *(["--preset", preset] if preset else []), *extra]
    print("+", " ".join(train), flush=True)
    start = time.monotonic()
    subprocess.run(train, check=True)
    wall = time.monotonic() - start
    out = subprocess.run(["textgen", "eval", "quality", str(held_out), "--runs-dir", str(runs), "--quiet"],
                         check=True, capture_output=True, text=True).stdout
    info = subprocess.run(["textgen", "info", "quality", "--runs-dir", str(runs)], check=True,
                          capture_output=True, text=True).stdout
    steps = int(re.search(r"steps:\s+([0-9,]+)", info).group(1).replace(",", ""))
    history = json.loads((runs / "quality" / "run.json").read_text(encoding="utf-8"))["history"]
    curve = " ".join(f"{h['step']}:{h['val_bpc']:.3f}" for h in history)  # overfitting shows here
    return {"bpc": float(re.search(r"^total +([0-9.]+)", out, re.MULTILINE).group(1)), "steps": steps,
            "wall_min": wall / 60, "info": info + f"validation curve (step:bpc): {curve}\n"}


def run_reference(corpus: Path, minutes: float, extra: list[str]) -> dict:
    command = [sys.executable, str(HERE / "torch_reference.py"), str(corpus), "--minutes", str(minutes), *extra]
    print("+", " ".join(command), flush=True)
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    found = re.search(r"reference bpc ([0-9.]+) steps (\d+) chars_per_sec (\d+)", out)
    return {"bpc": float(found.group(1)), "steps": int(found.group(2)), "chars_per_sec": int(found.group(3))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget of each")
    parser.add_argument("--preset", default=None, help="a textgen preset (textgen train --help)")
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--reference", action="store_true", help="also train the PyTorch reference")
    parser.add_argument("--reference-only", action="store_true", help="only the PyTorch reference")
    parser.add_argument("--reference-options", default="", help="options for bench/torch_reference.py")
    parser.add_argument("extra", nargs="*", help="more `textgen train` options, after --")
    args = parser.parse_args(argv)
    if not args.corpus.is_file():
        print(f"corpus not found: {args.corpus}", file=sys.stderr)
        return 2
    text = args.corpus.read_text(encoding="utf-8")
    print(f"corpus {args.corpus.name}: {len(text):,} characters, {len(set(text)):,} distinct; "
          f"{args.minutes:g} minutes each; {cpu_model()}", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        held_out = Path(tmp) / "held-out.txt"
        held_out.write_text(text[len(text) - int(len(text) * 0.1):], encoding="utf-8")
        if not args.reference_only:
            results["textgen"] = run_textgen(args.corpus, args.minutes, args.preset, args.extra,
                                             Path(tmp), held_out)
            print(results["textgen"]["info"])
        if args.reference or args.reference_only:
            results["torch"] = run_reference(args.corpus, args.minutes, args.reference_options.split())
    for name, r in results.items():
        print(f"{name:8s} held-out bpc {r['bpc']:.4f}  steps {r['steps']:,}")
    if len(results) == 2:
        print(f"textgen - torch: {results['textgen']['bpc'] - results['torch']['bpc']:+.4f} bits/char")
    return 0


if __name__ == "__main__":
    sys.exit(main())
