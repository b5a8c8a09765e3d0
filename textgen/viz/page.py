"""The `textgen viz` page: a trace packed into one self-contained HTML file under a size budget.

The page template, script and style live in `textgen/viz/viz_page/` and are inlined, with textgen's
shared renderer (`textgen/page_assets/render.js` and `render.css`: colour scales, hover card, font
hint, which the playground of `textgen serve` uses too) and the data, into one file that opens from
disk with no network. The data is two parts: a JSON header (the
vocabulary, notices, per-unit saturation, the ranked cells) and a binary blob of arrays, each
deflated on its own and the whole base64-encoded; the browser inflates them with its built-in
`DecompressionStream`.

Each value of i, f, C~, o, C and h for every character, unit and layer is stored as one
`bits`-bit level (0..2**bits - 1) on a fixed scale ([0, 1] for the gates, [-1, 1] for C~ and h,
[-max|C|, max|C|] per unit for C): a page colours text with at most 2**bits shades anyway. The
trace of 20,000 characters of a 2 x 256 model is 61 million numbers, more than 10 MB can hold
at any useful precision, so `fit_page` picks the largest precision from `BITS` whose page fits
`max_bytes`, and only if the coarsest does not fit, fewer characters (the caller says so).
"""

from __future__ import annotations

import base64
import json
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources

import numpy as np

from textgen.trace import Trace

BITS = (8, 6, 5, 4, 3)  # precisions tried, finest first
SCALES = {"i": (0.0, 1.0), "f": (0.0, 1.0), "o": (0.0, 1.0), "z": (0.0, 1.0), "r": (0.0, 1.0),
          "g": (-1.0, 1.0), "h": (-1.0, 1.0)}  # every cell's quantities but C (scaled per unit)
SAMPLED_UNITS = 32  # units per layer compressed to estimate a precision's size
PAGE_FILES = ("page.html", "page.css", "page.js")
SHARED_FILES = ("render.css", "render.js")  # in the core's textgen/page_assets/


@dataclass
class PackedPage:
    """What `fit_page` chose and packed: the first `length` characters at `bits` bits a value."""

    length: int
    bits: int
    manifest: list[dict]
    blob: bytes


def cell_scale(c: np.ndarray) -> np.ndarray:
    """max |C| of each unit over the text, (units,); 1 for a unit that stays at 0."""
    scale = np.abs(c).max(axis=0) if len(c) else np.zeros(c.shape[-1])
    return np.where(scale > 0, scale, 1.0).astype(np.float32)


def quantise(values: np.ndarray, low, high, bits: int) -> np.ndarray:
    """(time, units) values -> (units, time) uint8 levels 0..2**bits - 1 of [low, high].

    low and high are numbers or (units,) arrays. Unit-major, so one unit's series is contiguous
    (the page reads one unit at a time, and deflate finds runs along time).
    """
    levels = (1 << bits) - 1
    scaled = (np.asarray(values, np.float32) - low) / (np.asarray(high, np.float32) - low) * levels
    return np.ascontiguousarray(np.clip(np.rint(scaled), 0, levels).astype(np.uint8).T)


def unit_values(trace: Trace, length: int, bits: int, units=slice(None)) -> dict[str, np.ndarray]:
    """The quantised values of the first `length` characters: {"values/<layer>/<q>": (units, length)}."""
    arrays = {}
    for depth, layer in enumerate(trace.layers):
        for name in trace.quantities:
            values = layer[name][:length, units]
            if name == "c":
                scale = cell_scale(layer["c"])[units]
                low, high = -scale, scale
            else:
                low, high = SCALES[name]
            arrays[f"values/{depth}/{name}"] = quantise(values, low, high, bits)
    return arrays


def char_arrays(trace: Trace, length: int) -> dict[str, np.ndarray]:
    """Per-character arrays of the first `length` characters: ids, surprisal, top guesses."""
    id_type = np.dtype("<u2") if len(trace.vocab_chars) <= 1 << 16 else np.dtype("<u4")
    return {
        "ids": trace.ids[:length].astype(id_type),
        "surprisal": trace.surprisal[:length].astype("<f4"),
        "top_ids": np.ascontiguousarray(trace.top_ids[:length].astype(id_type)),
        # probabilities to 1/65535: three digits of a percentage
        "top_probs": np.rint(trace.top_probs[:length] * 65535).astype("<u2"),
    }


def pack(arrays: dict[str, np.ndarray]) -> tuple[list[dict], bytes]:
    """Deflate each array on its own (in threads: zlib releases the GIL) and concatenate.

    Returns (manifest [{"name", "dtype", "shape", "offset", "size"}], blob), where offset and
    size locate the array's deflate stream in the blob.
    """
    names = list(arrays)
    with ThreadPoolExecutor() as pool:
        streams = list(pool.map(lambda name: zlib.compress(arrays[name].tobytes(), 6), names))
    manifest, offset = [], 0
    for name, stream in zip(names, streams):
        array = arrays[name]
        manifest.append({"name": name, "dtype": array.dtype.name, "shape": list(array.shape),
                         "offset": offset, "size": len(stream)})
        offset += len(stream)
    return manifest, b"".join(streams)


def _encoded_size(raw_bytes: int) -> int:
    return 4 * ((raw_bytes + 2) // 3)  # base64


def _sampled_size(trace: Trace, bits: int) -> int:
    """Deflated bytes of all the unit values at `bits`, extrapolated from SAMPLED_UNITS evenly
    spaced units per layer (deflate's output grows in proportion to units and characters)."""
    units = trace.layers[0]["h"].shape[1]
    sample = slice(None, None, max(1, units // SAMPLED_UNITS))
    _, blob = pack(unit_values(trace, len(trace), bits, sample))
    return len(blob) * units // len(range(units)[sample])


def fit_page(trace: Trace, max_bytes: int, fixed: int) -> PackedPage:
    """Pack the trace at the finest precision of `BITS` whose page fits `max_bytes`; if even
    the coarsest does not, the first characters that fit. `fixed`: the page's bytes besides the
    blob (template and JSON header)."""
    length = len(trace)
    per_char = len(pack(char_arrays(trace, length))[1])
    sizes = {}

    def page_size(bits: int) -> int:
        if bits not in sizes:
            sizes[bits] = fixed + _encoded_size(per_char + _sampled_size(trace, bits))
        return sizes[bits]

    low, high = 0, len(BITS) - 1  # binary search: sizes shrink along BITS
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if page_size(BITS[middle]) <= max_bytes else (middle + 1, high)
    bits = BITS[low]
    if page_size(bits) > max_bytes:  # even the coarsest is too big: fewer characters
        length = max(1, int(length * (max_bytes - fixed) / max(page_size(bits) - fixed, 1) * 0.97))
    while True:  # the size was extrapolated from a sample: check the real thing
        manifest, blob = pack({**char_arrays(trace, length), **unit_values(trace, length, bits)})
        if fixed + _encoded_size(len(blob)) <= max_bytes or length == 1:
            return PackedPage(length, bits, manifest, blob)
        if bits != BITS[-1]:
            bits = BITS[BITS.index(bits) + 1]
        else:
            length = max(1, int(length * 0.95))


def page_template() -> str:
    """The page's HTML with its style and script inlined (placeholders for the data remain)."""
    folder = resources.files("textgen.viz") / "viz_page"
    html, css, script = (folder.joinpath(name).read_text(encoding="utf-8") for name in PAGE_FILES)
    shared = resources.files("textgen") / "page_assets"
    shared_css, shared_script = (shared.joinpath(name).read_text(encoding="utf-8") for name in SHARED_FILES)
    # the shared renderer first: the page's own style and script build on it
    style, script = shared_css + "\n" + css, shared_script + "\n" + script
    return html.replace("/*STYLE*/", style).replace("/*SCRIPT*/", script)


def script_json(value) -> str:
    """JSON that is safe inside a <script> element: ASCII only, no `<` (so no `</script>`)."""
    return json.dumps(value, ensure_ascii=True, separators=(",", ":")).replace("<", "\\u003c")


def render_page(header: dict, page: PackedPage, template: str | None = None) -> str:
    """The whole page: the template with the JSON header and the base64 blob filled in."""
    template = template or page_template()
    header = {**header, "length": page.length, "bits": page.bits, "arrays": page.manifest}
    # the data first: base64 never holds "__HEADER__", while the header may hold any text
    page_text = template.replace("__DATA__", base64.b64encode(page.blob).decode("ascii"), 1)
    return page_text.replace("__HEADER__", script_json(header), 1)


def header_size(header: dict, template: str) -> int:
    """Bytes of the page besides the blob, for `fit_page` (a generous manifest allowance)."""
    manifest_allowance = 160 * (4 + 6 * len(header.get("saturation", [])))
    return len(template.encode("utf-8")) + len(script_json(header)) + manifest_allowance
