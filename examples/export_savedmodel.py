"""Text from a `textgen export --format savedmodel` export with TensorFlow alone (no textgen needed):
python examples/export_savedmodel.py EXPORT_DIR [PRIME] [LENGTH] [TEMPERATURE]"""
import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ notices (no CUDA, CPU features) off
terminal, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)  # absl prints a few lines before
os.dup2(null, 2)  # TF_CPP_MIN_LOG_LEVEL applies: file descriptor 2 goes nowhere meanwhile
try:
    import tensorflow as tf
finally:
    os.dup2(terminal, 2)
    for fd in (terminal, null):
        os.close(fd)


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
