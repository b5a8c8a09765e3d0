"""Text from a `textgen export --format litert` export with LiteRT alone (pip install ai-edge-litert):
python examples/export_litert.py EXPORT_DIR [PRIME] [LENGTH] [TEMPERATURE]"""
import argparse
import json
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter


class TextGenerator:
    """The exported step function, fed one character at a time; it keeps the LSTM states."""

    def __init__(self, export_dir):
        self.chars = json.loads((Path(export_dir) / "vocab.json").read_text(encoding="utf-8"))
        self.runner = Interpreter(str(Path(export_dir) / "model.tflite")).get_signature_runner("step")
        inputs = self.runner.get_input_details()  # ids; h0, c0, h1, c1, ...: (1, units) zeros to start
        self.states = {name: np.zeros(d["shape"], np.float32) for name, d in inputs.items() if name != "ids"}

    def step(self, char_id):
        """Feed one character id; returns the logits of the next character, (vocab,)."""
        out = self.runner(ids=np.array([char_id], np.int32), **self.states)
        self.states = {name: out["new_" + name] for name in self.states}
        return out["logits"][0]

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
