"""Text from a `textgen export --format savedmodel` export with TensorFlow alone (no textgen needed):
python examples/export_savedmodel.py EXPORT_DIR [PRIME] [LENGTH] [TEMPERATURE]"""
import json
import sys
from pathlib import Path

import tensorflow as tf


class TextGenerator:
    """The SavedModel's `step` (one character at a time, keeping the LSTM states) and `generate`."""

    def __init__(self, export_dir):
        self.chars = json.loads((Path(export_dir) / "vocab.json").read_text(encoding="utf-8"))
        self.model = tf.saved_model.load(export_dir)
        inputs = self.model.signatures["step"].structured_input_signature[1]  # ids, h0, c0, h1, ...
        self.states = {name: tf.zeros((1, spec.shape[1])) for name, spec in inputs.items() if name != "ids"}

    def step(self, char_id):
        """Feed one character id; returns the logits of the next character, (vocab,)."""
        out = self.model.signatures["step"](ids=tf.constant([char_id], tf.int32), **self.states)
        self.states = {name: out["new_" + name] for name in self.states}
        return out["logits"][0].numpy()

    def generate(self, prime, length, temperature=0.0, seed=0, top_k=0, top_p=1.0):
        """`prime` and `length` characters after it, the whole loop inside the SavedModel's graph;
        temperature 0 picks the likeliest character each time."""
        ids = tf.constant([self.chars.index(ch) for ch in prime], tf.int32)
        out = self.model.signatures["generate"](
            prime=ids, length=tf.constant(length), temperature=tf.constant(float(temperature)),
            top_k=tf.constant(top_k), top_p=tf.constant(float(top_p)), seed=tf.constant(seed, tf.int64))
        return prime + "".join(self.chars[i] for i in out["ids"].numpy())


if __name__ == "__main__":
    export_dir, prime, length, temperature = (sys.argv[1:] + ["\n", "500", "0"][len(sys.argv) - 2:])[:4]
    print(TextGenerator(export_dir).generate(prime, int(length), float(temperature)))
