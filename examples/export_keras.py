"""Text from a `textgen export --format keras` export with Keras, textgen installed:
python examples/export_keras.py EXPORT_DIR [PRIME] [LENGTH] [TEMPERATURE]"""
import json
import sys
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
import textgen.model  # noqa: F401  (registers textgen's model and layers with Keras)


class TextGenerator:
    """The Keras model, fed one character at a time through one compiled graph (eager calls cost ~10x)."""

    def __init__(self, export_dir):
        self.chars = json.loads((Path(export_dir) / "vocab.json").read_text(encoding="utf-8"))
        self.model = keras.saving.load_model(Path(export_dir) / "model.keras")
        self.call, self.states = tf.function(self.model), self.model.initial_state(1)  # (h, c) per layer

    def step(self, char_id):
        """Feed one character id; returns the logits of the next character, (vocab,)."""
        logits, self.states = self.call(tf.constant([[char_id]], tf.int32), self.states)  # (1, 1, vocab)
        return np.asarray(logits)[0, 0]

    def generate(self, prime, length, temperature=0.0, seed=None):
        """`prime` and `length` characters after it; temperature 0 picks the likeliest each time."""
        rng, ids = np.random.default_rng(seed), [self.chars.index(ch) for ch in prime]
        for char_id in ids[:-1]:
            self.step(char_id)
        for _ in range(length):
            logits = self.step(ids[-1]).astype(np.float64) / (temperature or 1.0)
            probs = np.exp(logits - logits.max())
            ids.append(int(rng.choice(len(probs), p=probs / probs.sum()) if temperature else probs.argmax()))
        return "".join(self.chars[i] for i in ids)


if __name__ == "__main__":
    export_dir, prime, length, temperature = (sys.argv[1:] + ["\n", "500", "0"][len(sys.argv) - 2:])[:4]
    print(TextGenerator(export_dir).generate(prime, int(length), float(temperature)))
