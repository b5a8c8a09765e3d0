"""`textgen serve`'s trace endpoint, `POST /v1/trace` (a textgen extension, not OpenAI's): one
cell's value at every character of a text, and the cells that track simple features of it, so the
playground can colour generated text by a cell as `textgen viz` does.

The values come from `textgen.trace.trace_text` (the model's own cell code, the same numbers as
`textgen viz`), the ranking from `textgen.cell_features.rank_cells`. No Starlette here.

Request: {"model", "text", "layer" (default 0), "unit" (default: the best-ranked cell's),
"quantity" (one of the model's cell's quantities, `CellKind.quantities`: for the LSTM "c" (the
default: the cell's last state), "h", "i", "f", "g" or "o"; for the GRU "h" (default), "z", "r", "g")}. Answer: {"object": "textgen.trace", "model",
"layer", "unit", "quantity", "values" (one per character of `text`, the value after reading it),
"scale" (max |value|, for colouring), "unit_values" (the chosen unit's every quantity at every
character, for the hover card), "cells" (the ranked cells: feature, layer, unit, quantity, r,
follows; a feature that no unit follows has one entry with follows false)}.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from textgen.cell_features import rank_cells
from textgen.serve.completions import RequestError, is_int, model_name, refuse_unknown_chars, request_field
from textgen.trace import trace_text

TRACE_FIELDS = {"model", "text", "layer", "unit", "quantity"}
CELLS_PER_FEATURE = 3  # ranked cells returned per text feature


@dataclass
class TraceRequest:
    """A validated `POST /v1/trace` body (`parse_trace`'s result); `unit` None: the best-ranked."""

    model: str
    text: str
    layer: int
    unit: int | None
    quantity: str


def parse_trace(body, shapes: dict, vocabs: dict, max_chars: int) -> TraceRequest:
    """Validate a trace request against the served models.

    Args:
        body: the decoded JSON body.
        shapes: {name: (num_layers, units, cell kind)} of the served models.
        vocabs: {name: Vocabulary}.
        max_chars: the longest text traced.

    Raises RequestError (400 for bad fields, 404 for an unknown model).
    """
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    unknown = sorted(set(body) - TRACE_FIELDS)
    if unknown:
        raise RequestError(f"unrecognized request argument(s): {', '.join(unknown)}; a trace takes "
                           f"{', '.join(sorted(TRACE_FIELDS))}", param=unknown[0])
    name = model_name(body, shapes)
    num_layers, units, cell = shapes[name]
    text = request_field(body, "text", "", lambda v: isinstance(v, str), "a string")
    if not text:
        raise RequestError("'text' is empty: give the text to trace", param="text")
    if len(text) > max_chars:
        raise RequestError(f"the text has {len(text):,} characters; at most {max_chars:,} are traced",
                           param="text", code="context_length_exceeded")
    refuse_unknown_chars(text, vocabs[name], "text")
    layer = request_field(body, "layer", 0, lambda v: is_int(v) and 0 <= v < num_layers,
                          f"an integer from 0 to {num_layers - 1} (the model has {num_layers} layers)")
    unit = request_field(body, "unit", None, lambda v: is_int(v) and 0 <= v < units,
                         f"an integer from 0 to {units - 1} (each layer has {units} units)")
    quantity = request_field(body, "quantity", cell.state_names[-1], lambda v: v in cell.quantities,
                             "one of " + ", ".join(f"{q!r} ({cell.quantity_names[q]})" for q in cell.quantities)
                             + f" (the {cell.name} cell's)")
    return TraceRequest(name, text, layer, unit, quantity)


def trace_body(model, vocab, request: TraceRequest) -> dict:
    """Trace `request.text` through `model` and answer with the chosen cell's values and the
    ranked cells. Without a `unit`, the best-ranked cell of the chosen quantity (a state) that
    follows its feature is shown (else the best-ranked one; unit 0 for a gate, which is not ranked)."""
    trace = trace_text(model, vocab, request.text)
    cells = rank_cells(trace.chars, trace.layers, per_feature=CELLS_PER_FEATURE, quantities=trace.cell.state_names)
    layer, unit = request.layer, request.unit
    if unit is None:
        of_quantity = [c for c in cells if c["quantity"] == request.quantity]
        best = next((c for c in of_quantity if c["follows"]), of_quantity[0] if of_quantity else None)
        layer, unit = (best["layer"], best["unit"]) if best else (layer, 0)
    values = trace.layers[layer][request.quantity][:, unit]  # (time,)
    scale = float(np.abs(values).max()) if len(values) else 0.0
    rounded = lambda column: [round(float(v), 5) for v in column]  # noqa: E731
    return {"object": "textgen.trace", "model": request.model, "layer": layer, "unit": unit,
            "quantity": request.quantity, "values": rounded(values), "scale": round(scale, 5),
            "unit_values": {q: rounded(trace.layers[layer][q][:, unit]) for q in trace.quantities},
            "cells": [{**c, "r": round(c["r"], 4)} for c in cells]}
