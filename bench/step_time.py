"""Time of one training step for a few batch shapes: is a smaller batch free extra updates?

For each shape, textgen's model (embedding 64 -> 2 LSTM layers -> logits, vocabulary 65, dropout
0.1) and Adam, in one compiled step (forward + backward + update); `--warmup` untimed steps, then
`--steps` timed ones, each synchronised by fetching the loss. Prints ms per step and characters
per second. The shapes run one after another in this process, so compare them within one run.

    python bench/step_time.py
    python bench/step_time.py --shapes 256x64x100,256x32x100 --steps 10
"""

from __future__ import annotations

import argparse
import os
import sys
import time

DEFAULT_SHAPES = "256x64x100,256x32x100,256x64x50,384x64x100,384x32x100"  # units x batch x seq_len


def step_time(units: int, batch: int, seq_len: int, steps: int, warmup: int) -> float:
    """Seconds per compiled train step of a 2-layer model of `units` on (batch, seq_len)."""
    import keras
    import numpy as np
    import tensorflow as tf

    from textgen.config import ModelConfig
    from textgen.model import build_model

    model = build_model(ModelConfig(vocab_size=65, units=units, num_layers=2, dropout=0.1))
    optimizer = keras.optimizers.Adam(1e-3)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss, _ = model.sequence_loss(x, y, training=True)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    x = tf.constant(np.random.default_rng(0).integers(0, 65, (batch, seq_len)), tf.int32)
    for _ in range(warmup):
        float(step(x, x))
    start = time.perf_counter()
    for _ in range(steps):
        float(step(x, x))
    return (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help="units x batch x seq_len, comma-separated")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from textgen.parallel import configure_threads

    # as the trainer does, from the smallest batch (one plan per process)
    threads = configure_threads(min(int(shape.split("x")[1]) for shape in args.shapes.split(",")))
    print(f"{os.cpu_count()} CPUs; thread pools (intra-op, inter-op): {threads or 'TensorFlow default'}; "
          f"{args.steps} timed steps after {args.warmup} warm-up steps")
    for shape in args.shapes.split(","):
        units, batch, seq_len = (int(v) for v in shape.split("x"))
        seconds = step_time(units, batch, seq_len, args.steps, args.warmup)
        print(f"2 x {units:4d}, batch {batch:3d} x seq_len {seq_len:3d}: {seconds * 1000:6.0f} ms/step, "
              f"{batch * seq_len / seconds:8,.0f} chars/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
