"""One-stream sampling speed with the inference step's two layouts of the first layer's input:
the embedding folded into a (vocab, 4*units) table (one gather a step) or kept apart (a gather of
the (vocab, embedding) row, then x.W + b), the latter chosen from 69 characters up at the default
shape because it holds fewer numbers (smaller exports). Same model and weights, the two
alternating over 5 repeats of 2,000 characters.

    python bench/fold_speed.py 100        # vocabulary size (default 100)
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np

from textgen.config import ModelConfig, SampleConfig
from textgen.model import CharLSTM, build_model
from textgen.sample import Sampler


def main() -> None:
    vocab = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    model = build_model(ModelConfig(vocab_size=vocab))
    original = CharLSTM.step_weights
    rates: dict[bool, list[float]] = {True: [], False: []}
    samplers = {}

    def use(fold: bool) -> None:  # the Sampler reads step_weights() once per chunk
        CharLSTM.step_weights = lambda self, fold_=None: original(self, fold=fold)

    for fold in (True, False):
        use(fold)
        samplers[fold] = Sampler(model)
        list(samplers[fold].generate(np.array([1], np.int32), SampleConfig(length=200, seed=1)))  # compile
    for rep in range(5):
        for fold in ((True, False) if rep % 2 == 0 else (False, True)):
            use(fold)
            t0 = time.perf_counter()
            list(samplers[fold].generate(np.array([1], np.int32), SampleConfig(length=2000, seed=1)))
            rates[fold].append(2000 / (time.perf_counter() - t0))
    ratios = [apart / folded for apart, folded in zip(rates[False], rates[True])]
    print(f"vocab {vocab}, 2 x 256, embedding 64, one stream: folded {statistics.median(rates[True]):,.0f} "
          f"chars/s, apart {statistics.median(rates[False]):,.0f} chars/s; apart/folded median "
          f"{statistics.median(ratios):.2f} (per repeat: {', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
