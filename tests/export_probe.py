"""Run one `examples/export_*.py` script against an export, in a process of its own (used by
tests/test_export_command.py; not a test module itself).

    python export_probe.py EXAMPLE EXPORT_DIR TEXT_FILE PRIME LENGTH RESULT_DIR

1. Runs the example as a program (`python EXAMPLE EXPORT_DIR PRIME LENGTH 0`: greedy) and keeps
   what it prints.
2. Feeds the characters of TEXT_FILE one at a time through the example's `TextGenerator.step`
   and saves the logits after each, (len(text), vocab), to RESULT_DIR/logits.npy.
3. Writes RESULT_DIR/result.json: {"printed": ..., "modules": the top-level modules loaded}.

It imports nothing but the standard library and numpy itself, so `modules` shows exactly what the
example's runtime pulled in (the tests check that textgen and TensorFlow are not among them).
"""

from __future__ import annotations

import contextlib
import io
import json
import runpy
import sys
from pathlib import Path

import numpy as np


def main(example: str, export_dir: str, text_file: str, prime: str, length: str, result_dir: str) -> None:
    sys.argv = [example, export_dir, prime, length, "0"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        namespace = runpy.run_path(example, run_name="__main__")
    generator = namespace["TextGenerator"](export_dir)
    text = Path(text_file).read_text(encoding="utf-8")
    logits = np.stack([np.asarray(generator.step(generator.chars.index(ch)), np.float32) for ch in text])
    np.save(Path(result_dir) / "logits.npy", logits)  # (len(text), vocab)
    modules = sorted({name.split(".")[0] for name in sys.modules})
    result = {"printed": printed.getvalue(), "modules": modules}
    (Path(result_dir) / "result.json").write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    main(*sys.argv[1:7])
