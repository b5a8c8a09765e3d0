"""Why large vocabularies learned slowly: one factor at a time, each trained the same minutes on
the same split and scored the same way, side by side (issue 13).

Each variant trains textgen's default recipe (`textgen train` defaults: 2 x 256, embedding 64,
batch 64 x 100, Adam 2e-3 with warm-up and cosine decay over the budget, clip 5) for `--minutes`
on the first 90% of the corpus, then scores its best checkpoint on the last 10% with `textgen
eval`'s own code (one stream, state carried). One factor changes per variant:

  keras-init        the embedding initialised as Keras's default, uniform(-0.05, 0.05) (textgen
                    before issue 13), the output layer glorot-uniform
  default           textgen now: embedding N(0, 1), as PyTorch's nn.Embedding
  torch-head        + the output layer initialised as PyTorch's nn.Linear: uniform(+-1/sqrt(units))
                    for kernel and bias
  embedding-path    + the first layer fed by embedding lookups and x.W (not the precomputed
                    (vocab, 4*units) projection table; same numbers, other gradient route)
  embedding-dropout + dropout 0.1 on the embedding output

    python bench/vocab_factors.py --corpus ../shared/corpora/songci.txt --minutes 5
    python bench/vocab_factors.py --variants keras-init,default --minutes 5
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VARIANTS = ("keras-init", "default", "torch-head", "embedding-path", "embedding-dropout")


def apply(variant: str) -> dict:
    """Monkeypatch textgen for `variant`; returns extra model options."""
    import keras

    from textgen import model as model_module

    if variant == "keras-init":
        original = model_module.CharLSTM.__init__

        def keras_embedding(self, config, *args, **kwargs):
            original(self, config, *args, **kwargs)
            self.embedding = keras.layers.Embedding(config.vocab_size, config.embedding_dim,
                                                    name="embedding", dtype=self.dtype_policy)

        model_module.CharLSTM.__init__ = keras_embedding
    if variant in ("torch-head", "embedding-path", "embedding-dropout"):
        original_init = model_module.CharLSTM.__init__

        def torch_head(self, config, *args, **kwargs):
            original_init(self, config, *args, **kwargs)
            bound = 1.0 / config.units ** 0.5
            uniform = keras.initializers.RandomUniform(-bound, bound)
            self.head = keras.layers.Dense(config.vocab_size, name="logits", dtype=self.dtype_policy,
                                           kernel_initializer=uniform, bias_initializer=uniform)

        model_module.CharLSTM.__init__ = torch_head
    if variant == "embedding-path":
        model_module.CharLSTM._use_projection_table = lambda self, ids, training=False: False
    return {"embedding_dropout": 0.1} if variant == "embedding-dropout" else {}


def run(variant: str, corpus: Path, minutes: float) -> dict:
    """Train and score one variant (call in a fresh process: the patches are global)."""
    from textgen.evaluate import evaluate
    from textgen.inference import load_run
    from textgen.launch import launch

    model_options = apply(variant)
    text = corpus.read_text(encoding="utf-8")
    held_out = text[len(text) - int(len(text) * 0.1):]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.monotonic()
        run_dir, _, progress = launch([str(corpus)], model_options, {"minutes": minutes, "val_fraction": 0.1},
                                      Path(tmp) / "runs", name="v", show_progress=False, echo=lambda s: None)
        wall = time.monotonic() - start
        loaded = load_run(str(run_dir), Path(tmp) / "runs")
        result = evaluate(loaded.model, loaded.vocab, [held_out])
    return {"variant": variant, "bpc": result.bpc, "steps": progress.step, "wall_min": wall / 60}


def main(argv: list[str] | None = None) -> int:
    import json
    import subprocess

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=HERE.parents[1] / "shared" / "corpora" / "songci.txt")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one variant, print JSON
    args = parser.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(run(args.one, args.corpus, args.minutes)), flush=True)
        return 0
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    print(f"corpus {args.corpus}, {args.minutes:g} minutes per variant, one after another", flush=True)
    for variant in variants:
        out = subprocess.run([sys.executable, __file__, "--corpus", str(args.corpus), "--minutes",
                              str(args.minutes), "--one", variant], check=True, capture_output=True,
                             text=True).stdout
        r = json.loads(out.split("RESULT ", 1)[1])
        print(f"{r['variant']:18s} held-out bpc {r['bpc']:.4f}  steps {r['steps']:,}  "
              f"({r['wall_min']:.1f} min wall)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
