"""Why large vocabularies learned slowly: one factor at a time, each trained the same minutes on
the same split and scored the same way, side by side (issue 13).

Each variant trains textgen's default recipe (`textgen train` defaults: 2 x 256, embedding 64,
batch 64 x 100, Adam 2e-3 with warm-up and cosine decay over the budget, clip 5) for `--minutes`
on the first 90% of the corpus, then scores its best checkpoint on the last 10% with `textgen
eval`'s own code (one stream, state carried). Factors (join several with "+",
e.g. `glorot-head+constant-lr`):

  default           textgen now: embedding N(0, 1) (as PyTorch's nn.Embedding), output layer
                    kernel uniform(+-1/sqrt(units)) (as nn.Linear's), output bias at the log
                    character frequencies of the training text (--head-bias unigram)
  keras-init        Keras's defaults for both: embedding uniform(-0.05, 0.05), output layer
                    glorot-uniform, bias zeros (textgen before issue 13)
  glorot-head       output layer glorot-uniform, bias zeros (textgen between the two fixes)
  torch-head        the output layer exactly as nn.Linear: kernel and bias uniform(+-1/sqrt(units))
  zero-bias         the output bias starts at zeros (--head-bias zeros)
  embedding-path    the first layer fed by embedding lookups and x.W (not the precomputed
                    (vocab, 4*units) projection table; same numbers, other gradient route)
  embedding-dropout dropout 0.1 on the embedding output
  constant-lr       no warm-up, Adam 2e-3 constant, as the PyTorch reference trains (textgen's
                    default: 100 warm-up steps, cosine decay to 0.1x over the budget)

    python bench/vocab_factors.py --corpus ../shared/corpora/songci.txt --minutes 5
    python bench/vocab_factors.py --variants keras-init,glorot-head,default --minutes 5
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FACTORS = ("default", "keras-init", "glorot-head", "torch-head", "zero-bias", "embedding-path",
           "embedding-dropout", "constant-lr")


def _patch_layers(embedding=None, head=None) -> None:
    """Replace the embedding's and/or the head's initialisers of every CharLSTM built from now."""
    import keras

    from textgen import model as model_module

    original = model_module.CharLSTM.__init__

    def patched(self, config, *args, **kwargs):
        original(self, config, *args, **kwargs)
        if embedding is not None:
            self.embedding = keras.layers.Embedding(config.vocab_size, config.embedding_dim, name="embedding",
                                                    dtype=self.dtype_policy, embeddings_initializer=embedding)
        if head is not None:
            self.head = keras.layers.Dense(config.vocab_size, name="logits", dtype=self.dtype_policy, **head(config))

    model_module.CharLSTM.__init__ = patched


def apply(variant: str) -> tuple[dict, dict]:
    """Monkeypatch textgen for the factors of `variant` ("a+b"); returns extra (model, train) options."""
    import keras

    from textgen import model as model_module

    model_options, train_options = {}, {}
    for factor in variant.split("+"):
        if factor in ("keras-init", "glorot-head", "torch-head", "zero-bias"):
            train_options["head_bias"] = "zeros"  # the bias as initialised, not the frequencies
            model_options["head_shortlist"] = 0  # these variants replace a one-softmax head
        if factor == "keras-init":
            _patch_layers(embedding="uniform", head=lambda config: {})
        elif factor == "glorot-head":
            _patch_layers(head=lambda config: {})
        elif factor == "torch-head":
            def torch_head(config):
                bound = 1.0 / config.units ** 0.5
                uniform = keras.initializers.RandomUniform(-bound, bound)
                return {"kernel_initializer": uniform, "bias_initializer": uniform}

            _patch_layers(head=torch_head)
        elif factor == "embedding-path":
            model_module.CharLSTM._use_projection_table = lambda self, ids, training=False: False
        elif factor == "embedding-dropout":
            model_options["embedding_dropout"] = 0.1
        elif factor == "constant-lr":
            train_options.update(warmup_steps=0, lr_decay="none")
    return model_options, train_options


def run(variant: str, corpus: Path, minutes: float) -> dict:
    """Train and score one variant (call in a fresh process: the patches are global)."""
    from textgen.evaluate import evaluate
    from textgen.inference import load_run
    from textgen.launch import launch

    model_options, train_options = apply(variant)
    text = corpus.read_text(encoding="utf-8")
    held_out = text[len(text) - int(len(text) * 0.1):]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.monotonic()
        run_dir, _, progress = launch([str(corpus)], model_options,
                                      {"minutes": minutes, "val_fraction": 0.1, **train_options},
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
    parser.add_argument("--variants", default=",".join(FACTORS), help="comma-separated; a+b combines factors")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one variant, print JSON
    args = parser.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(run(args.one, args.corpus, args.minutes)), flush=True)
        return 0
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted({f for v in variants for f in v.split("+")} - set(FACTORS))
    if unknown:
        parser.error(f"unknown factors {unknown}; choose from {', '.join(FACTORS)}")
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
