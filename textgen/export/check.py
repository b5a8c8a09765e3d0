"""Running an export through its own runtime: to check it against textgen's model, and to time it.

`open_runner(format, directory)` returns a `step(ids, states) -> (logits, new states)` function
that calls the export through its runtime's Python API (TensorFlow's SavedModel loader, the
LiteRT interpreter, onnxruntime, Keras), on numpy arrays: ids (batch,) int32, states
{"h0": (batch, units), "c0": ..., ...} float32, logits (batch, vocab) float32.
`textgen export` feeds the same characters to the export and to textgen's own model and refuses
to publish an export whose logits differ by more than the tolerance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from textgen.cell import CellKind
from textgen.config import LN2
from textgen.export.docs import state_names

KERAS_FILE, LITERT_FILE, ONNX_FILE = "model.keras", "model.tflite", "model.onnx"
StepRunner = Callable[[np.ndarray, dict], tuple[np.ndarray, dict]]


def open_runner(export_format: str, directory: Path) -> StepRunner:
    """The export in `directory` as a step function, run by the format's own runtime."""
    directory = Path(directory)
    if export_format == "savedmodel":
        import tensorflow as tf

        signature = tf.saved_model.load(str(directory)).signatures["step"]
        return _named_outputs(lambda feed: {k: v.numpy() for k, v in signature(**feed).items()})
    if export_format == "litert":
        from ai_edge_litert.interpreter import Interpreter

        runner = Interpreter(model_path=str(directory / LITERT_FILE)).get_signature_runner("step")
        return _named_outputs(lambda feed: runner(**feed))
    if export_format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(directory / ONNX_FILE), providers=["CPUExecutionProvider"])
        names = [output.name for output in session.get_outputs()]
        return _named_outputs(lambda feed: dict(zip(names, session.run(None, feed))))
    if export_format == "keras":
        return _keras_runner(directory / KERAS_FILE)
    raise ValueError(f"unknown export format {export_format!r}")


def _named_outputs(run: Callable[[dict], dict]) -> StepRunner:
    """A step runner over `run(feed) -> {"logits": ..., "new_h0": ..., ...}`."""

    def step(ids, states):
        out = run({"ids": ids, **states})
        return out["logits"], {name: out[f"new_{name}"] for name in states}

    return step


def _keras_runner(path: Path) -> StepRunner:
    """The `.keras` archive, loaded by Keras and called as a Keras user would: model(ids, states)."""
    import keras
    import tensorflow as tf

    import textgen.model  # registers CharLSTM and its layers with Keras; (un)flattens the states

    model = keras.saving.load_model(path)
    call = tf.function(lambda ids, states: model(ids[:, None], states), reduce_retracing=True)

    def step(ids, states):
        names = list(states)  # in `state_names` order
        per_layer = textgen.model.unflatten_state([states[n] for n in names], model.cell_kind)
        logits, new_states = call(tf.constant(ids), per_layer)  # (batch, 1, vocab)
        flat = [t.numpy() for t in textgen.model.flatten_state(new_states)]
        return logits.numpy()[:, 0], dict(zip(names, flat))

    return step


def zero_states(num_layers: int, units: int, cell: CellKind, batch: int = 1) -> dict:
    """{"h0": zeros (batch, units), "c0": ..., ...}: the `cell`'s states before the first character."""
    return {name: np.zeros((batch, units), np.float32) for name in state_names(num_layers, cell)}


def feed(step: StepRunner, ids: np.ndarray, num_layers: int, units: int, cell: CellKind) -> np.ndarray:
    """Logits after each of `ids`, fed one at a time from the zero state: (len(ids), vocab)."""
    states, rows = zero_states(num_layers, units, cell), []
    for char_id in np.asarray(ids, np.int32):
        logits, states = step(np.array([char_id], np.int32), states)
        rows.append(np.asarray(logits)[0])
    return np.stack(rows)


def reference_logits(model, ids: np.ndarray) -> np.ndarray:
    """textgen's own logits after each of `ids`, from its sequence path: (len(ids), vocab)."""
    import tensorflow as tf

    call = tf.function(lambda ids: model(ids)[0])  # a graph: the eager loop costs ~4 ms a step
    return call(tf.constant(np.asarray(ids, np.int32)[None])).numpy()[0]  # (len, vocab)


def bits_per_char(logits: np.ndarray, ids: np.ndarray) -> float:
    """Mean bits per character of ids[1:] under the logits after ids[:-1]."""
    logits = np.asarray(logits[:-1], np.float64)  # (n - 1, vocab)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return float(-log_probs[np.arange(len(ids) - 1), ids[1:]].mean() / LN2)
