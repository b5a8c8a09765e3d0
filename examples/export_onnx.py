"""Text from a `textgen export --format onnx` export with onnxruntime alone (pip install onnxruntime):
python examples/export_onnx.py EXPORT_DIR [PRIME] [LENGTH] [TEMPERATURE]"""
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime


class TextGenerator:
    """The exported step function, fed one character at a time; it keeps the LSTM states."""

    def __init__(self, export_dir):
        self.chars = json.loads((Path(export_dir) / "vocab.json").read_text(encoding="utf-8"))
        self.session = onnxruntime.InferenceSession(str(Path(export_dir) / "model.onnx"))
        self.states = {i.name: np.zeros((1, i.shape[1]), np.float32) for i in self.session.get_inputs()[1:]}

    def step(self, char_id):
        """Feed one character id; returns the logits of the next character, (vocab,)."""
        feed = {"ids": np.array([char_id], np.int32), **self.states}  # states: h0, c0, h1, c1, ...
        out = dict(zip([o.name for o in self.session.get_outputs()], self.session.run(None, feed)))
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


if __name__ == "__main__":
    export_dir, prime, length, temperature = (sys.argv[1:] + ["\n", "500", "0"][len(sys.argv) - 2:])[:4]
    print(TextGenerator(export_dir).generate(prime, int(length), float(temperature)))
