"""The raw trace on disk: `textgen viz --format json|npz` (schema in the README).

npz (numpy's own format, loads with `np.load(path)`, no pickle): `chars` and `vocab` as arrays
of single characters, `ids`, `top_ids`, `top_probs`, `surprisal`, `layer<n>_<q>` (time, units)
float32 for q in the cell's quantities (the header's `quantities`: i, f, g, o, c, h for the LSTM;
z, r, g, h for the GRU), `skipped_chars` / `skipped_counts`, and `header`, a JSON
string (run, checkpoint, source, notices, ranked cells). JSON: one ASCII object with the same
content, numbers rounded to 6 decimals, the NaN surprisal of the last character as null. Both are written
to a temporary file and renamed into place, so an existing file is never left half-written.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TextIO

import numpy as np

from textgen.atomic import atomic_write_stream
from textgen.trace import Trace

FORMAT = "textgen-trace"
VERSION = 2  # 2: the header names the cell, its quantities and gates, and its per-unit weights
# (issue 28; `layer<n>_<q>` for the cell's own q); version 1 had the LSTM's i, f, g, o, c, h alone


def _json_rows(f: TextIO, array: np.ndarray) -> None:
    """A 2-D array as a JSON list of lists, row by row (the whole trace never becomes one string)."""
    rounded = np.round(array.astype(np.float64), 6)
    f.write("[")
    for t, row in enumerate(rounded):
        f.write(("," if t else "") + json.dumps(row.tolist()))
    f.write("]")


def write_trace_json(trace: Trace, path: str | Path, header: dict) -> None:
    """The trace as one JSON object; `header` (run, checkpoint, source, ...) is merged in."""
    def write(binary) -> None:
        f = io.TextIOWrapper(binary, encoding="utf-8")
        top = {
            "format": FORMAT, "version": VERSION, **header,
            "chars": trace.chars, "ids": trace.ids.tolist(), "vocab": trace.vocab_chars,
            "skipped": dict(trace.skipped.most_common()),
            "top_ids": trace.top_ids.tolist(),
            "top_chars": [[trace.vocab_chars[i] for i in row] for row in trace.top_ids.tolist()],
            "top_probs": np.round(trace.top_probs.astype(np.float64), 6).tolist(),
            "surprisal": [None if np.isnan(s) else round(float(s), 6) for s in trace.surprisal],
        }
        f.write(json.dumps(top)[:-1] + ', "layers": [')  # ASCII: \u escapes survive any text
        for depth, layer in enumerate(trace.layers):
            f.write(", {" if depth else "{")
            for k, name in enumerate(trace.quantities):
                f.write(f'{", " if k else ""}"{name}": ')
                _json_rows(f, layer[name])
            f.write("}")
        f.write("]}\n")
        f.flush()
        f.detach()  # leave the file to atomic_write_stream

    atomic_write_stream(path, write)


def trace_arrays(trace: Trace, header: dict) -> dict[str, np.ndarray]:
    """The npz file's arrays (see the module docstring)."""
    arrays = {
        "chars": np.array(list(trace.chars), dtype="<U1"),
        "vocab": np.array(trace.vocab_chars, dtype="<U1"),
        "ids": trace.ids, "top_ids": trace.top_ids, "top_probs": trace.top_probs,
        "surprisal": trace.surprisal,
        "skipped_chars": np.array(list(trace.skipped), dtype="<U1"),
        "skipped_counts": np.array(list(trace.skipped.values()), dtype=np.int64),
        "header": np.array(json.dumps({"format": FORMAT, "version": VERSION, **header})),
    }
    for depth, layer in enumerate(trace.layers):
        arrays.update({f"layer{depth}_{name}": layer[name] for name in trace.quantities})
    return arrays


def write_trace_npz(trace: Trace, path: str | Path, header: dict) -> None:
    """The trace as an uncompressed .npz (the values are float32 noise to a compressor)."""
    arrays = trace_arrays(trace, header)
    atomic_write_stream(path, lambda f: np.savez(f, **arrays))
