"""Text from a `textgen export --format keras` export with Keras, textgen installed:
python examples/export_keras.py EXPORT_DIR [PRIME] [LENGTH] [TEMPERATURE]"""
import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ notices (no CUDA, CPU features) off
terminal, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)  # absl prints a few lines before
os.dup2(null, 2)  # TF_CPP_MIN_LOG_LEVEL applies: file descriptor 2 goes nowhere meanwhile
try:
    import keras
    import numpy as np
    import tensorflow as tf
    import textgen.model  # noqa: F401  (registers textgen's model and layers with Keras)
finally:
    os.dup2(terminal, 2)
    for fd in (terminal, null):
        os.close(fd)


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


if __name__ == "__main__":  # usage, one line and exit 2 for bad arguments (as argparse does)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export_dir")
    parser.add_argument("prime", nargs="?", default="\n")
    parser.add_argument("length", nargs="?", type=int, default=500)
    parser.add_argument("temperature", nargs="?", type=float, default=0.0)
    args = parser.parse_args()
    if not (Path(args.export_dir) / "vocab.json").is_file():
        parser.error(f"{args.export_dir} is not a textgen export (it has no vocab.json)")
    generator = TextGenerator(args.export_dir)
    unknown = " ".join(map(repr, sorted(set(args.prime) - set(generator.chars))))
    if unknown or not args.prime:
        parser.error(f"the prime has characters the model never saw: {unknown}" if unknown
                     else "the prime is empty")
    print(generator.generate(args.prime, args.length, args.temperature))
