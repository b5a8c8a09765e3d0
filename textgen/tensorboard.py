"""TensorBoard logging for a training run, laid out the way Keras users read it.

Each run directory holds two TensorBoard runs, `train/` and `validation/`, that log the same
tag, `bits_per_char`, so `tensorboard --logdir checkpoints` draws the two curves of a run on one
chart (overfitting shows as the validation curve turning up while the training one goes on
down). `train/` also has `learning_rate` and `chars_per_sec`; `validation/` has, at each
validation, a generated `sample` (text) and, per layer, histograms of the input, forget and output
gates, the candidate and the cell state on the first validation window, with the fraction of
saturated gates (`gates/layer_<n>/...`, from `textgen.trace`), so gates can be watched saturating
as the model learns. Training scalars are written every `log_every` steps, the
mean over those steps, so logging costs the loop nothing measurable.

A trainer hook (see `textgen.train`): `on_steps`, `on_validation`, `close`. Only the chief of a
multi-worker run writes; the others get no-op writers.
"""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf

from textgen.config import LN2, SampleConfig

TRAIN_DIR, VALIDATION_DIR = "train", "validation"
SAMPLE_CHARS = 300  # length of the text sample logged at each validation
SAMPLE_TEMPERATURE = 0.8
GATE_ROWS = 16  # validation rows whose gates are logged (16 x seq_len characters)


class TensorBoardLog:
    """Event files of one run: `<run_dir>/train/` and `<run_dir>/validation/`.

    Args:
        run_dir: the run directory.
        write: False for the non-chief workers of a multi-worker run (they log nothing).
    """

    def __init__(self, run_dir: Path, write: bool = True):
        def writer(name):
            if not write:
                return tf.summary.create_noop_writer()
            return tf.summary.create_file_writer(str(Path(run_dir) / name))

        self.train, self.validation = writer(TRAIN_DIR), writer(VALIDATION_DIR)
        self.write = write
        self._sample_model = self._sampler = None

    def on_steps(self, step: int, train_loss: float, chars_per_sec: float, learning_rate: float) -> None:
        with self.train.as_default(step=step):
            tf.summary.scalar("bits_per_char", train_loss / LN2)
            tf.summary.scalar("learning_rate", learning_rate)
            tf.summary.scalar("chars_per_sec", chars_per_sec)

    def on_validation(self, step: int, val_bpc: float, trainer) -> None:
        if not self.write:
            return
        from textgen.trace import gate_batch, write_gate_summaries

        with self.validation.as_default(step=step):
            tf.summary.scalar("bits_per_char", val_bpc)
            tf.summary.text("sample", self._sample_text(trainer, step))
            window, _ = trainer.val_data.window(0)  # (batch, seq_len)
            write_gate_summaries(gate_batch(self._sample_model, window[:GATE_ROWS]), step,
                                 self._sample_model.cell_kind)
        self.validation.flush()

    def _sample_text(self, trainer, step: int) -> str:
        """A sample from a float32 single-device copy of the current weights (whatever the
        strategy and precision of training, sampling is what a user will run)."""
        from textgen.model import build_model
        from textgen.sample import generate_text, sampler_for

        if self._sampler is None:
            self._sample_model = build_model(trainer.model_config)
            self._sampler = sampler_for(self._sample_model, trainer.vocab)
        self._sample_model.set_weights(trainer.model.get_weights())
        config = SampleConfig(temperature=SAMPLE_TEMPERATURE, length=SAMPLE_CHARS, seed=step)
        return generate_text(self._sample_model, trainer.vocab, config, sampler=self._sampler)[0]

    def close(self) -> None:
        for writer in (self.train, self.validation):
            writer.flush()
            writer.close()


