"""What an export says about itself: README.md for people and export.json for programs.

Both are written beside every export from the same facts: where it came from, the files, the
step function's inputs and outputs with their shapes, how to generate, and the check it passed.
"""

from __future__ import annotations

from textgen import __version__
from textgen.cell import CellKind, config_cell
from textgen.config import shortlist_for

VOCAB_FILE, README_FILE, MANIFEST_FILE = "vocab.json", "README.md", "export.json"
MANIFEST_FORMAT = "textgen-export"

MODEL_FILES = {
    "savedmodel": "`saved_model.pb`, `variables/`: the SavedModel (this directory is the SavedModel)",
    "litert": "`model.tflite`: the LiteRT (TensorFlow Lite) flatbuffer, with one signature, `step`",
    "onnx": "`model.onnx`: the step function as an ONNX graph",
    "keras": "`model.keras`: the Keras model (textgen's CharLSTM), architecture and weights",
}

LOADING = {
    "savedmodel": """\
Load with TensorFlow alone (textgen is not needed): `model = tf.saved_model.load(DIR)`.
`model.signatures["step"](ids=..., h0=..., c0=..., ...)` is the step function below, and
`model.signatures["generate"](prime=..., length=..., temperature=..., top_k=..., top_p=..., seed=...)`
runs the whole generation loop in the graph and returns {"ids": (length,) int32}: `prime` (n,) int32
ids (n >= 1; all but the last warm the state up), `length` int32, `temperature` float32 (0: greedy),
`top_k` int32 (0: off), `top_p` float32 (1: off), `seed` int64 (same seed, same text: a seed
from 0 to 2147483647 gives exactly what `textgen sample --seed` gives; others are reduced modulo 2^31).
With temperature 0 it writes exactly what `textgen sample --temp 0` writes. If `vocab.json` holds
U+FFFD (the rare characters of a `--min-count` run, folded together), `generate` never writes it, as
`textgen sample` does not; `step`'s logits include it.""",
    "litert": """\
Run with the LiteRT interpreter (`pip install ai-edge-litert`; no TensorFlow needed):
`Interpreter(model_path="model.tflite").get_signature_runner("step")(ids=..., h0=..., ...)`.
It uses LiteRT's built-in operators only (no TensorFlow "Flex" ops).""",
    "onnx": """\
Run with onnxruntime (`pip install onnxruntime`; no TensorFlow needed):
`onnxruntime.InferenceSession("model.onnx").run(None, {"ids": ..., "h0": ..., ...})`.
Converted from the model's TensorFlow step function by tf2onnx, ONNX opset {opset}.""",
    "keras": """\
Load with Keras when textgen is installed: `import textgen.model` (it registers textgen's layers
with Keras), then `model = keras.saving.load_model("model.keras")`. The model's
`model(ids, states)` takes ids (batch, time) int32 and states [(h, c) per layer] (or None for
zeros) and returns (logits (batch, time, vocab) float32, new states): feed whole texts at once,
or one character at a time with ids of shape (batch, 1). It can also be trained further.""",
}


def state_names(num_layers: int, cell: CellKind) -> list[str]:
    """Names of the step function's per-layer state inputs, in order: each of the cell's
    `state_names` followed by the layer number (h0, c0, h1, c1, ... for the LSTM)."""
    return [f"{name}{layer}" for layer in range(num_layers) for name in cell.state_names]


def signature(report) -> dict:
    """The step function's inputs and outputs: {"inputs": [...], "outputs": [...]} of
    {"name", "shape", "dtype"}."""
    shape = report.model_config
    states = state_names(shape.num_layers, config_cell(shape))
    return {
        "inputs": [{"name": "ids", "shape": ["batch"], "dtype": "int32"}]
        + [{"name": n, "shape": ["batch", shape.units], "dtype": "float32"} for n in states],
        "outputs": [{"name": "logits", "shape": ["batch", shape.vocab_size], "dtype": "float32"}]
        + [{"name": f"new_{n}", "shape": ["batch", shape.units], "dtype": "float32"} for n in states],
    }


def shape_text(shape: list) -> str:
    """["batch"] -> "(batch,)", ["batch", 32] -> "(batch, 32)"."""
    return f"({shape[0]},)" if len(shape) == 1 else f"({', '.join(map(str, shape))})"


def manifest(report) -> dict:
    """export.json: what an app needs to drive the export without reading the README."""
    shape, config = report.model_config, report.config
    return {
        "format": MANIFEST_FORMAT, "version": 1, "textgen_version": __version__,
        "export_format": config.format, "quantize": config.quantize,
        "run": report.run, "checkpoint": report.checkpoint,
        "model": {"vocab_size": shape.vocab_size, "embedding_dim": shape.embedding_dim,
                  "units": shape.units, "num_layers": shape.num_layers},
        "vocab": VOCAB_FILE, "step": signature(report),
        "check": {"runtime": report.runtime, "characters": report.checked_chars,
                  "max_abs_logit_difference": report.max_difference},
        "quantization": report.quantization,
    }


LOG_PROBS = (" (its two-level output layer makes them log-probabilities already; softmax them "
             "all the same)")


def readme_text(report) -> str:
    """README.md: the export explained to the person who will build an app on it."""
    shape, config = report.model_config, report.config
    rows = [f"| `{v['name']}` | {shape_text(v['shape'])} | {v['dtype']} |"
            for part in ("inputs", "outputs") for v in signature(report)[part]]
    n_in = 1 + 2 * shape.num_layers
    val = (f" (the run's best validation: {report.val_bpc:.4f} bits per character)"
           if report.val_bpc is not None else "")
    quant = ""
    if report.quantization:
        q = report.quantization
        quant = (f"\nWeights are stored as int8 (dynamic-range quantization; activations stay float32): "
                 f"{q['bytes']:,} bytes against {q['float32_bytes']:,} for float32. Bits per character on "
                 f"{report.checked_chars} characters of {q['eval_text']}: {q['bpc']:.4f} "
                 f"(float32: {q['bpc_float32']:.4f}).\n")
    return f"""# textgen export of `{report.run}` ({config.format})

Exported by textgen {__version__} from run `{report.run}`, checkpoint `{report.checkpoint}`{val}.
The model: an embedding of {shape.embedding_dim}, {shape.num_layers} LSTM layer(s) of {shape.units} units,
logits over a vocabulary of {shape.vocab_size} characters{LOG_PROBS if shortlist_for(shape) else ""}.

## Files

- {MODEL_FILES[config.format]}
- `{VOCAB_FILE}`: the vocabulary, a JSON array of strings: character id `i` is its `i`-th entry
- `{MANIFEST_FILE}`: these facts for programs (shapes, names, the check below)
- `{README_FILE}`: this file

## The step function

One character in, the next character's logits out. The first {n_in} rows are the inputs, the rest
the outputs; `h<k>`/`c<k>` are layer k's hidden and cell state.

| name | shape | dtype |
| --- | --- | --- |
{chr(10).join(rows)}

To generate: start every state at zeros, feed the prime's characters one at a time (each call
returns the states for the next one); the logits after the last prime character score the first
new character. Pick its id (the largest logit for greedy text, or sample from
softmax(logits / temperature)), feed it back with the new states, and repeat. Streams in a batch
are independent.

## Loading

{LOADING[config.format].replace("{opset}", str(config.onnx_opset))}
{quant}
## Checked

Before it was written, `textgen export` ran this export with {report.runtime} on {report.checked_chars}
characters, one at a time, beside textgen's own model: the logits differed by at most
{report.max_difference:.2g}.
"""
