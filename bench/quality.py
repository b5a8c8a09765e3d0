"""Text quality on tinyshakespeare: validation bits per character for a training budget.

nanoGPT's split: the first 90% of ../shared/corpora/tinyshakespeare.txt trains, the last 10%
validates. The script runs the real CLI — `textgen train` with the given budget and options,
then `textgen eval` of the best checkpoint on the held-out 10% (one stream, state carried over
the whole text) — and prints the validation bpc.

    python bench/quality.py --minutes 10 --preset small
    python bench/quality.py --minutes 30 --preset small -- --dropout 0.2   # extra train options
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "tinyshakespeare.txt"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget")
    parser.add_argument("--preset", default=None, help="a textgen preset (textgen train --help)")
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--keep-run", type=Path, default=None, help="runs dir to keep the run in")
    parser.add_argument("extra", nargs="*", help="more `textgen train` options, after --")
    args = parser.parse_args(argv)
    if not args.corpus.is_file():
        print(f"corpus not found: {args.corpus}", file=sys.stderr)
        return 2
    text = args.corpus.read_text(encoding="utf-8")
    n_train = int(len(text) * 0.9)
    with tempfile.TemporaryDirectory() as tmp:
        runs = args.keep_run or Path(tmp) / "runs"
        val_file = Path(tmp) / "val.txt"
        val_file.write_text(text[n_train:], encoding="utf-8")
        train_cmd = [sys.executable, "-m", "textgen", "train", str(args.corpus), "--val-fraction",
                     "0.1", "--minutes", str(args.minutes), "--runs-dir", str(runs), "--name",
                     "quality", "--quiet", *(["--preset", args.preset] if args.preset else []),
                     *args.extra]
        print("+", " ".join(train_cmd), flush=True)
        start = time.monotonic()
        subprocess.run(train_cmd, check=True)
        trained = time.monotonic() - start
        eval_cmd = [sys.executable, "-m", "textgen", "eval", "quality", str(val_file),
                    "--runs-dir", str(runs), "--quiet"]
        out = subprocess.run(eval_cmd, check=True, capture_output=True, text=True).stdout
        info = subprocess.run([sys.executable, "-m", "textgen", "info", "quality", "--runs-dir",
                               str(runs)], check=True, capture_output=True, text=True).stdout
    print(info)
    bpc = float(re.search(r"bits per character: ([0-9.]+)", out).group(1))
    print(f"train wall time {trained / 60:.1f} min (budget {args.minutes} min + start-up and final eval)")
    print(f"validation bpc (last 10%, one stream): {bpc:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
