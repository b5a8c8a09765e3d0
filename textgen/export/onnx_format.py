"""The ONNX export: the model's `step` function as an ONNX graph, for onnxruntime and other runtimes.

Converted by tf2onnx from the very `step` that the SavedModel export holds (`StepModule.step`),
so it is the same graph of TensorFlow ops: a Gather of the first layer's lookup table, one MatMul
per layer, the gate equations as Split/Sigmoid/Tanh/Mul/Add, and the output layer. tf2onnx 1.17
converts it under TensorFlow 2.21 / NumPy 2 / protobuf 7; `textgen export` checks every export
with onnxruntime against textgen's own model before publishing it, so a converter that went
wrong (tf2onnx continues past ops it cannot convert) never ships a broken file.
"""

from __future__ import annotations

from pathlib import Path

from textgen.export.step_module import StepModule

BATCH_DIM = "batch"  # the symbolic name of every input's and output's first dimension


def convert_onnx(model, path: Path, opset: int) -> None:
    """Write `model`'s (a built CharLSTM's) step function to `path` as an ONNX model.

    Inputs: ids (batch,) int32 and h0, c0, h1, c1, ... (batch, units) float32; outputs: logits
    (batch, vocab) and new_h0, new_c0, ... (batch, units), all float32.
    """
    import onnx
    import tf2onnx

    module = StepModule(model)
    proto, _ = tf2onnx.convert.from_function(module.step, input_signature=module.step.input_signature,
                                             opset=opset)
    # tf2onnx names each unknown dimension on its own (unk__14, unk__15, ...); one name tells
    # runtimes and readers that every input and output shares the batch dimension.
    for value in [*proto.graph.input, *proto.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_param = BATCH_DIM
    proto.doc_string = "textgen character LSTM: one step (see README.md beside this file)"
    proto.producer_name = "textgen"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
