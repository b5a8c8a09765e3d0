"""`textgen.viz.page`: quantisation, the packed blob, and a page that no text can break out of."""

from __future__ import annotations

import base64
import json
import re
import zlib

import numpy as np
import pytest

from textgen.viz.page import PackedPage, cell_scale, pack, quantise, render_page


@pytest.mark.parametrize("bits", [8, 5, 3])
def test_quantised_levels_come_back_within_half_a_step(bits):
    rng = np.random.default_rng(bits)
    values = rng.uniform(-2, 2, size=(100, 3)).astype(np.float32)  # (time, units)
    scale = cell_scale(values)
    levels = quantise(values, -scale, scale, bits)
    assert levels.shape == (3, 100) and levels.dtype == np.uint8 and levels.max() <= (1 << bits) - 1
    step = 2 * scale / ((1 << bits) - 1)
    restored = -scale + levels.T * step
    assert (np.abs(restored - values) <= step / 2 + 1e-6).all()
    assert levels.min() == 0 and levels.max() == (1 << bits) - 1  # the unit's extremes use the ends
    np.testing.assert_array_equal(cell_scale(np.zeros((4, 2))), [1, 1])


def test_packed_arrays_inflate_to_themselves():
    arrays = {"a": np.arange(300, dtype="<u2"), "b": np.linspace(0, 1, 7, dtype="<f4").reshape(7, 1)}
    manifest, blob = pack(arrays)
    for entry in manifest:
        raw = zlib.decompress(blob[entry["offset"]: entry["offset"] + entry["size"]])
        restored = np.frombuffer(raw, dtype=entry["dtype"]).reshape(entry["shape"])
        np.testing.assert_array_equal(restored, arrays[entry["name"]])


def test_no_text_in_the_header_can_close_the_script_element():
    header = {"source": "</script><script>alert(1)</script>", "notices": ["<!-- x", "__DATA__ __HEADER__"],
              "vocab": ["<", "中"]}
    page = PackedPage(length=1, bits=8, manifest=[], blob=b"\x00\xff")
    html = render_page(header, page, template='<script id="header">__HEADER__</script><p>__DATA__</p>')
    assert html.count("</script>") == 1 and "<!--" not in html
    body = re.search(r'id="header">(.*?)</script>', html)[1]
    assert json.loads(body)["source"] == header["source"] and json.loads(body)["vocab"] == ["<", "中"]
    assert json.loads(body)["notices"] == header["notices"]
    assert base64.b64decode(re.search(r"<p>(.*)</p>", html)[1]) == b"\x00\xff"
