"""`textgen serve`'s trace endpoint logic (textgen.serve.trace_api), without a server: what is refused
and what a trace answers. The HTTP side is in test_serve_app.py."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from textgen.serve.trace_api import parse_trace, trace_body
from textgen.serve.completions import RequestError
from textgen.cell import LSTM, cell_kind
from textgen.config import ModelConfig
from textgen.model import build_model
from textgen.trace import trace_text
from textgen.vocab import Vocabulary

TEXT = 'say "hi" (twice) and "bye" (once)\nsay "no"\n'


@pytest.fixture(scope="module")
def model_and_vocab():
    vocab = Vocabulary.from_text(TEXT)
    tf.keras.utils.set_random_seed(3)
    return build_model(ModelConfig(vocab_size=vocab.size, embedding_dim=4, units=8, num_layers=2)), vocab


def parse(body, vocab, max_chars=100, cell=LSTM):
    return parse_trace(body, {"m": (2, 8, cell)}, {"m": vocab}, max_chars)


def test_a_chosen_cell_is_the_traces_own_column(model_and_vocab):
    model, vocab = model_and_vocab
    reference = trace_text(model, vocab, TEXT)
    for quantity, layer, unit in (("c", 1, 3), ("f", 0, 7), ("g", 1, 0)):
        body = trace_body(model, vocab, parse({"text": TEXT, "layer": layer, "unit": unit,
                                               "quantity": quantity}, vocab))
        want = reference.layers[layer][quantity][:, unit]
        np.testing.assert_allclose(body["values"], want, atol=1e-5)
        assert body["scale"] == pytest.approx(np.abs(want).max(), abs=1e-5)
        assert (body["model"], body["layer"], body["unit"], body["quantity"]) == ("m", layer, unit, quantity)
        for q in ("i", "f", "g", "o", "c", "h"):  # the unit's six values, for the playground's card
            np.testing.assert_allclose(body["unit_values"][q], reference.layers[layer][q][:, unit], atol=1e-5)


def test_without_a_unit_the_best_ranked_cell_of_the_quantity_is_shown(model_and_vocab):
    model, vocab = model_and_vocab
    body = trace_body(model, vocab, parse({"text": TEXT, "quantity": "h", "layer": 1}, vocab))
    best_h = next(c for c in body["cells"] if c["quantity"] == "h")
    assert (body["layer"], body["unit"]) == (best_h["layer"], best_h["unit"])
    assert "inside double quotes" in {c["feature"] for c in body["cells"]}
    # gates are not ranked: a gate without a unit shows unit 0 of the layer asked for
    body = trace_body(model, vocab, parse({"text": TEXT, "quantity": "i", "layer": 1}, vocab))
    assert (body["layer"], body["unit"]) == (1, 0)


@pytest.mark.parametrize("body,status,fragment", [
    ({"model": "x", "text": "say"}, 404, "'x' does not exist; served here: m"),
    ({"text": "say" * 40}, 400, "120 characters; at most 100"),
    ({"text": "say \u00e9"}, 400, "never saw: '\u00e9'"),
    ({"text": "say", "layer": 2}, 400, "from 0 to 1 (the model has 2 layers)"),
    ({"text": "say", "unit": -1}, 400, "from 0 to 7 (each layer has 8 units)"),
    ({"text": "say", "quantity": "C"}, 400, "'quantity' must be one of 'i' (input gate)"),
    ({"text": 5}, 400, "'text' must be a string"),
    ("say", 400, "must be a JSON object"),
])
def test_bad_requests_are_refused_with_a_status_and_a_line(model_and_vocab, body, status, fragment):
    with pytest.raises(RequestError) as refused:
        parse(body, model_and_vocab[1])
    assert refused.value.status == status and fragment in refused.value.message


def test_a_gru_is_traced_by_its_own_quantities():
    """The quantity check asks the model's cell: a GRU answers z, r, g, h (h by default, its only
    state, ranked) and refuses the LSTM's C in one line naming its own."""
    vocab, gru = Vocabulary.from_text(TEXT), cell_kind("gru")
    tf.keras.utils.set_random_seed(3)
    model = build_model(ModelConfig(vocab_size=vocab.size, embedding_dim=4, units=8, num_layers=2, cell="gru"))
    reference = trace_text(model, vocab, TEXT)
    body = trace_body(model, vocab, parse({"text": TEXT, "layer": 1, "unit": 2, "quantity": "z"}, vocab, cell=gru))
    np.testing.assert_allclose(body["values"], reference.layers[1]["z"][:, 2], atol=1e-5)
    assert sorted(body["unit_values"]) == sorted(gru.quantities)
    default = trace_body(model, vocab, parse({"text": TEXT}, vocab, cell=gru))
    assert default["quantity"] == "h" and {c["quantity"] for c in default["cells"]} == {"h"}
    with pytest.raises(RequestError, match="'quantity' must be one of 'z' \\(update gate\\).*the gru cell's"):
        parse({"text": TEXT, "quantity": "c"}, vocab, cell=gru)
