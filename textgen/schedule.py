"""The learning-rate schedule: linear warm-up, then cosine decay to a floor.

Hand-written (rather than `keras.optimizers.schedules.CosineDecay`) because the decay length
must be settable after training starts: under a `--minutes` budget the number of steps is only
known once the speed has been measured. It is a plain function of the optimizer's step counter,
which checkpoints save, so a resumed run follows exactly the same curve.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf


class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """lr(step): peak * (step+1)/warmup during warm-up, then cosine from peak to
    peak * min_ratio over the remaining `decay_steps`; constant at peak while decay_steps is 0."""

    def __init__(self, peak: float, warmup_steps: int, min_ratio: float = 0.1, decay_steps: int = 0):
        self.peak = float(peak)
        self.warmup_steps = int(warmup_steps)
        self.min_ratio = float(min_ratio)
        self.decay_steps = tf.Variable(float(decay_steps), trainable=False, dtype=tf.float32)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup = float(max(self.warmup_steps, 1))
        warm = self.peak * tf.minimum((step + 1.0) / warmup, 1.0)
        span = tf.maximum(self.decay_steps - self.warmup_steps, 1.0)
        frac = tf.clip_by_value((step - self.warmup_steps) / span, 0.0, 1.0)
        cosine = self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + tf.cos(math.pi * frac))
        decayed = tf.where(self.decay_steps > self.warmup_steps, self.peak * cosine, self.peak)
        return tf.where(step < self.warmup_steps, warm, decayed)

    def set_decay_steps(self, steps: int) -> None:
        """Fix the total length of the schedule (in optimizer steps)."""
        self.decay_steps.assign(float(steps))

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps, "min_ratio": self.min_ratio,
                "decay_steps": int(self.decay_steps.numpy())}
