"""`textgen export`, a wing of its own: a trained run as a SavedModel, LiteRT, ONNX or Keras file
that runs without textgen, proven against textgen's own model before it is published.

    command.py      the entry `textgen export` calls: build, check, publish
    step_module.py  the one-character inference step as a tf.Module (the exported graph)
    onnx_format.py  the ONNX conversion of that step
    check.py        running an export in its own runtime and comparing logits and greedy text
    docs.py         the manifest and README written beside every export

It uses the core (model, sampler) and nothing in the core imports it.
"""
