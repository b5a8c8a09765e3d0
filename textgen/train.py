"""The trainer: truncated BPTT over contiguous streams, validation in bits per character,
checkpoints, resume, TensorBoard and a progress bar.

The loop is written by hand around one compiled `train_step` rather than `Model.fit`, because
the hidden state has to flow from each window into the next (and be saved and restored for an
exact resume); `fit` treats batches as independent. Keras still provides the layers, the Adam
optimizer with global-norm clipping and the weights format; `tf.data` feeds the windows;
`tf.summary` writes TensorBoard events; tqdm draws the bar.

Stopping: SIGINT/SIGTERM set a flag checked after every step, so the step finishes, a checkpoint
of it is written (without an extra validation, so the validation history of an interrupted run is
the same as one trained in one go) and `run` returns the signal's name; the CLI then prints where
the checkpoint is and how to resume, and exits 0.

Divergence guard: training stops with a TextgenError (exit code 2), without writing a checkpoint
of the bad weights, when a training loss is NaN/Inf, or exceeds `DIVERGENCE_FACTOR` x ln(vocab)
nats (ln(vocab) is what a model that knows nothing, guessing uniformly, scores; a model doing
twice as badly puts on average under 1/vocab^2 on the right character: it has blown up), or when
a validation loss does, or the weights are not finite when a checkpoint is due. The run keeps its
last good checkpoint (a new run always has one, of step 0) and the message says how to resume it
with a lower learning rate.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from textgen import checkpoint as ckpt
from textgen import runs
from textgen.config import ModelConfig, SampleConfig, TrainConfig
from textgen.data import StreamBatcher
from textgen.dropout import dropout_key
from textgen.distribute import Replicas, make_strategy, worker_count
from textgen.errors import TextgenError
from textgen.launch import StopRequest
from textgen.model import CharLSTM, build_model, flatten_state, unflatten_state
from textgen.parallel import configure_threads
from textgen.progress import Progress, progress_problem
from textgen.schedule import WarmupCosine
from textgen.vocab import Vocabulary

LN2 = math.log(2.0)
DIVERGENCE_FACTOR = 2.0  # a loss above this many times ln(vocab) means training has diverged
ESTIMATE_AFTER = 20  # steps timed before a --minutes budget fixes the schedule's length
SAMPLE_CHARS = 300  # length of the text sample logged to TensorBoard at each validation


def loss_fn(logits, targets):
    """Mean cross-entropy in nats. logits: (batch, time, vocab); targets: (batch, time)."""
    return tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits)
    )


class Trainer:
    """Owns the model, optimizer, data and run directory of one training run."""

    def __init__(self, run_dir: Path, vocab: Vocabulary, train_data: StreamBatcher,
                 val_data: StreamBatcher, model_config: ModelConfig, train_config: TrainConfig,
                 meta: dict, chief: bool = True):
        """`chief`: whether this process writes the run (False for the other workers of a
        multi-worker run, which train in step with the chief and write nothing)."""
        # thread pools and strategy first: both must be set up before any TensorFlow op runs
        self.threads = configure_threads(train_config.batch_size // worker_count(train_config.strategy))
        self.strategy = make_strategy(train_config.strategy)
        self.replicas = Replicas(self.strategy, train_config.batch_size,
                                 multiworker=train_config.strategy == "multiworker")
        self.run_dir, self.vocab, self.meta, self.chief = run_dir, vocab, meta, chief
        self.model_config, self.config = model_config, train_config
        self.train_data, self.val_data = train_data, val_data
        keras.utils.set_random_seed(train_config.seed)
        with self.strategy.scope():  # weights and optimizer slots become mirrored variables
            self.model: CharLSTM = build_model(model_config, precision=train_config.precision)
            self.schedule = WarmupCosine(
                train_config.learning_rate, train_config.warmup_steps,
                min_ratio=train_config.min_lr_ratio if train_config.lr_decay == "cosine" else 1.0)
            # Clipping is done by the train step, not by Keras's `global_clipnorm`: under a
            # strategy Keras clips each replica's share of the gradient before summing them,
            # which is not the global norm of the batch's gradient.
            self.optimizer = keras.optimizers.Adam(learning_rate=self.schedule)
            if train_config.precision == "mixed_float16":  # float16 gradients underflow unscaled
                self.optimizer = keras.optimizers.LossScaleOptimizer(self.optimizer)
            self.optimizer.build(self.model.trainable_variables)
        self.progress = Progress()
        self.carried = self._zero_carry()  # flat [h0, c0, h1, c1, ...], one value per replica
        self.loss_limit = DIVERGENCE_FACTOR * math.log(max(vocab.size, 2))
        self._saved_step: int | None = None  # step of the checkpoint last written or restored
        self._out_of_time = False  # the --minutes budget is spent (agreed between workers)
        self._stopping: str | None = None  # why the loop stops early (agreed between workers)
        self._train_step = tf.function(self._train_step_eager, reduce_retracing=True)
        self._eval_step = tf.function(self._eval_step_eager, reduce_retracing=True)

    # ------------------------------------------------------------------ compiled steps

    def _replica_train_step(self, x, y, flat_states):
        """One replica's forward and backward pass on its rows of the global window, and the
        update: every replica applies the same summed, clipped gradient to its weights."""
        replicas, clip = self.replicas, self.config.clip_norm
        x, y = replicas.my_rows(x), replicas.my_rows(y)  # (rows, seq_len) each
        with tf.GradientTape() as tape:
            key = dropout_key(self.config.seed, self.optimizer.iterations)  # masks: (seed, step) only
            loss, states = self.model.sequence_loss(x, y, unflatten_state(flat_states), training=True,
                                                    dropout_key=key)
            loss = loss / replicas.count  # this replica's share of the batch mean
            scaled = self.optimizer.scale_loss(loss)  # x the loss scale under mixed_float16
        variables = self.model.trainable_variables
        # dense: clip_by_global_norm would take the norm of an IndexedSlices' rows, which is not
        # the gradient's norm when an id repeats (the embedding's, when it is looked up directly)
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(scaled, variables)]
        grads = replicas.sum(grads)  # the whole batch's gradient
        if clip:
            scale = getattr(self.optimizer, "dynamic_scale", 1.0)
            grads, _ = tf.clip_by_global_norm(grads, clip * tf.cast(scale, tf.float32))
        if replicas.count > 1:  # Keras sums the replicas' gradients once more: hand it shares
            grads = [g / replicas.count for g in grads]
        self.optimizer.apply_gradients(zip(grads, variables))
        return replicas.sum(loss), flatten_state(states)

    def _train_step_eager(self, x, y, flat_states):
        """x, y: the global window (batch, seq_len); flat_states: per-replica carried states."""
        loss, flat = self.strategy.run(self._replica_train_step, args=(x, y, flat_states))
        return self.replicas.first(loss), flat

    def _eval_step_eager(self, x, y, flat_states):
        loss, states = self.model.sequence_loss(x, y, unflatten_state(flat_states), training=False)
        return loss, flatten_state(states)

    def _zero_carry(self) -> list:
        """Zero LSTM states for every row of the training batch, split across the replicas."""
        shape = (self.config.batch_size, self.model_config.units)
        return self._scatter([np.zeros(shape, np.float32)] * (2 * self.model_config.num_layers))

    def _scatter(self, arrays: list) -> list:
        """Global (batch, units) float32 arrays -> per-replica states in the compute dtype."""
        dtype = self.model.compute_dtype
        return self.replicas.scatter([np.asarray(a, np.float32) for a in arrays], dtype=dtype)

    # ------------------------------------------------------------------ state for resume

    def _arrays(self) -> dict:
        arrays = {f"opt_{i}": v.numpy() for i, v in enumerate(self.optimizer.variables)}
        carried = self.replicas.gather(self.carried)  # a collective under multiworker
        arrays.update({f"carry_{i}": a.astype(np.float32) for i, a in enumerate(carried)})
        return arrays

    def restore(self, ckpt_dir: Path) -> None:
        """Load weights, optimizer slots, carried state, RNG and progress from a checkpoint.

        The learning rate is the configured one (it may be lowered on resume, e.g. after a
        divergence), not the saved one."""
        ckpt.load_weights(self.model, ckpt_dir)
        state, arrays = ckpt.load_resume(ckpt_dir)
        problem = progress_problem(state.get("progress"), self.train_data.num_windows)
        if problem:
            raise TextgenError(f"{ckpt_dir / ckpt.STATE_FILE} cannot be resumed ({problem}); "
                               "retrain or restore the run")
        try:
            for i, v in enumerate(self.optimizer.variables):
                v.assign(arrays[f"opt_{i}"])
            flat = [arrays[f"carry_{i}"] for i in range(2 * self.model_config.num_layers)]
            for x in flat:
                if tuple(x.shape) != (self.config.batch_size, self.model_config.units):
                    raise ValueError(f"carried state of shape {tuple(x.shape)}")
            self.progress = Progress(**state["progress"])
        except (KeyError, ValueError, TypeError, tf.errors.InvalidArgumentError) as e:
            raise TextgenError(f"{ckpt_dir} does not match this run "
                               f"({' '.join(str(e).split())[:200]}); retrain or restore the run") from None
        self.carried = self._scatter(flat)
        self._saved_step = self.progress.step

    def save(self) -> str | None:
        """Write a checkpoint for the current step and point run.json at it (only once the
        checkpoint is complete); then prune old checkpoints. Every worker calls it (the carried
        states are gathered from all replicas); only the chief writes."""
        if not all(np.isfinite(w.numpy()).all() for w in self.model.weights):
            raise self._diverged("the weights are no longer finite numbers")
        arrays = self._arrays()
        if not self.chief:
            self._saved_step = self.progress.step
            return None
        state = {"step": self.progress.step, "progress": vars(self.progress)}
        name = ckpt.save_checkpoint(self.run_dir, self.model, state, arrays)
        checkpoints = self.meta["checkpoints"]
        checkpoints["last"] = name
        checkpoints["best"] = self.progress.best_checkpoint or name
        self.meta.update(step=self.progress.step, best_val_bpc=self.progress.best_val_bpc,
                         history=self.progress.history)
        runs.write_run_meta(self.run_dir, runs.meta_to_json(self.meta))
        ckpt.prune_checkpoints(self.run_dir, self.config.keep, {checkpoints["best"], name})
        self._saved_step = self.progress.step
        return name

    def _diverged(self, what: str) -> TextgenError:
        """The one-line divergence error: what happened, what is kept, how to go on."""
        last = self.meta.get("checkpoints", {}).get("last")
        kept = (f"run {self.run_dir} keeps its last good checkpoint {last}" if last
                else "no checkpoint was written")
        lr = self.config.learning_rate
        lower = min(lr / 10, TrainConfig().learning_rate)
        return TextgenError(
            f"training diverged at step {self.progress.step}: {what}; {kept}; resume it with a "
            f"lower learning rate (it is {lr:g}): textgen train --resume --name {self.run_dir.name} "
            f"--runs-dir {self.run_dir.parent} --learning-rate {lower:.2g}"
        )

    def _check_loss(self, loss: float, what: str = "training loss") -> None:
        if not math.isfinite(loss):
            raise self._diverged(f"the {what} is {loss}")
        if loss > self.loss_limit:
            raise self._diverged(
                f"the {what} is {loss:.4g} nats, above {self.loss_limit:.3g} ({DIVERGENCE_FACTOR:g} x "
                f"ln {self.vocab.size}, twice that of guessing uniformly)")

    # ------------------------------------------------------------------ validation

    def validate(self) -> float:
        """Validation bits per character over up to `eval_batches` consecutive windows."""
        states = flatten_state(self.model.initial_state(self.val_data.batch_size))
        total = 0.0
        count = min(self.val_data.num_windows, self.config.eval_batches)
        for k in range(count):
            x, y = self.val_data.window(k)
            loss, states = self._eval_step(tf.constant(x), tf.constant(y), states)
            total += float(loss)
        return total / count / LN2

    def _validate_and_save(self, train_loss: float, writer) -> float:
        """Validate, log to TensorBoard, record history, checkpoint (marking a new best)."""
        p = self.progress
        val_bpc = self.validate()
        self._check_loss(val_bpc * LN2, "validation loss")
        p.history.append({"step": p.step, "epoch": p.epoch,
                          "train_loss": train_loss if math.isfinite(train_loss) else None,
                          "val_bpc": val_bpc})
        if p.best_val_bpc is None or val_bpc < p.best_val_bpc:
            p.best_val_bpc = val_bpc
            p.best_checkpoint = ckpt.checkpoint_name(p.step)
        if self.chief:  # the other workers validate too (early stopping), but log nothing
            with writer.as_default(step=p.step):
                tf.summary.scalar("val/bpc", val_bpc)
                tf.summary.text("sample", self._sample_text())
        self.save()
        return val_bpc

    def _sample_text(self) -> str:
        """A sample for TensorBoard, from a float32 single-device copy of the current weights
        (whatever the strategy and precision of training, sampling is what a user will run)."""
        from textgen.sample import Sampler, generate_text

        if getattr(self, "_sampler", None) is None:
            self._sample_model = build_model(self.model_config)
            self._sampler = Sampler(self._sample_model)
        self._sample_model.set_weights(self.model.get_weights())
        config = SampleConfig(temperature=0.8, length=SAMPLE_CHARS, seed=self.progress.step)
        return generate_text(self._sample_model, self.vocab, config, sampler=self._sampler)[0]

    # ------------------------------------------------------------------ the loop

    def _budget_reached(self) -> bool:
        c, p = self.config, self.progress
        if c.steps is not None and p.step >= c.steps:
            return True
        if c.epoch_budget() is not None and p.epoch >= c.epoch_budget():
            return True
        return self._out_of_time

    def _poll(self, stop: StopRequest, session_start: float) -> None:
        """Read the clock and the signal flag. Workers of a multi-worker run must stop at the same
        step (every step is a collective), so there a signal or the time limit on any worker
        stops them all. The loop acts on the agreed `_stopping`, never on the live flag: a signal
        landing just after a worker gave its vote must wait for the next poll, or that worker
        would stop one step before the others (and leave them waiting in a collective)."""
        c = self.config
        requested = stop.requested  # this worker's vote, read once
        out_of_time = c.minutes is not None and time.monotonic() - session_start >= 60 * c.minutes
        signalled, out_of_time = self.replicas.any([bool(requested), out_of_time])
        if signalled:
            self._stopping = requested or "a signal to another worker"
        self._out_of_time = out_of_time

    def _fix_schedule_from_speed(self, session_start: float, first_step: int) -> None:
        """Under a --minutes budget, set the schedule's length from the speed measured so far."""
        c, p = self.config, self.progress
        if not c.minutes:
            return
        elapsed = time.monotonic() - session_start
        rate = (p.step - first_step) / max(elapsed, 1e-9)  # steps per second
        estimate = p.step + int(rate * max(60 * c.minutes - elapsed, 0))
        p.schedule_steps = int(self.replicas.agree(estimate, self.chief))  # one schedule for all
        self.schedule.set_decay_steps(p.schedule_steps)

    def _patience_exhausted(self) -> bool:
        """Early stopping: `patience` validations in a row without a new best."""
        c, p = self.config, self.progress
        if not c.patience or p.best_val_bpc is None:
            return False
        best_index = max(i for i, h in enumerate(p.history) if h["val_bpc"] == p.best_val_bpc)
        return len(p.history) - 1 - best_index >= c.patience

    def _total_steps(self) -> int | None:
        c = self.config
        per_epoch = self.train_data.num_windows
        epochs = c.epoch_budget()
        totals = [t for t in (c.steps, epochs and epochs * per_epoch) if t]
        return min(totals) if totals else None

    def run(self, show_progress: bool = True, stop: StopRequest | None = None) -> str:
        """Train until the budget is spent or a stop is requested; returns why it stopped
        ("budget", or the signal's name after a checkpoint of the current step was written).

        `stop`: a StopRequest already installed by the caller; by default one is installed here.
        """
        c, p = self.config, self.progress
        chars_per_step = c.batch_size * c.seq_len
        session_start, session_first_step = time.monotonic(), p.step
        if self._total_steps():  # a step or epoch budget fixes the schedule's length now
            p.schedule_steps = self._total_steps()
        self.schedule.set_decay_steps(p.schedule_steps)
        reason, loss, last_val = "budget", float("nan"), p.best_val_bpc
        self._stopping = None
        with contextlib.ExitStack() as stack:
            if stop is None:
                stop = stack.enter_context(StopRequest())
            writer = (tf.summary.create_file_writer(str(self.run_dir / "events"))
                      if self.chief else tf.summary.create_noop_writer())
            stack.callback(writer.close)
            bar = tqdm(total=self._total_steps(), initial=p.step, unit="step", dynamic_ncols=True,
                       disable=not show_progress, leave=True)
            stack.callback(bar.close)
            self._poll(stop, session_start)
            while not self._stopping and not self._budget_reached():
                step_start = time.monotonic()
                for x, y in self.train_data.dataset(p.window):
                    loss_t, self.carried = self._train_step(x, y, self.carried)
                    loss = float(loss_t)
                    p.step, p.window = p.step + 1, p.window + 1
                    self._check_loss(loss)
                    now = time.monotonic()
                    p.elapsed += now - step_start
                    speed = chars_per_step / max(now - step_start, 1e-9)
                    step_start = now
                    with writer.as_default(step=p.step):
                        tf.summary.scalar("train/loss", loss)
                        tf.summary.scalar("train/chars_per_sec", speed)
                        tf.summary.scalar("train/learning_rate", float(self.optimizer.learning_rate))
                    if not p.schedule_steps and p.step - session_first_step == ESTIMATE_AFTER:
                        self._fix_schedule_from_speed(session_start, session_first_step)
                    if p.step % c.eval_every == 0:
                        last_val = self._validate_and_save(loss, writer)
                        if self._patience_exhausted():
                            self._stopping = "early stopping"  # same history on every worker
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.3f}", val_bpc=_fmt(last_val),
                                    chars_s=f"{speed:,.0f}", refresh=False)
                    self._poll(stop, session_start)
                    if self._stopping or self._budget_reached():
                        break
                else:  # the epoch's windows are exhausted: next epoch starts from a zero state
                    p.epoch, p.window = p.epoch + 1, 0
                    self.carried = self._zero_carry()
            if self._stopping == "early stopping":
                reason = "early stopping"
            elif self._stopping and not self._budget_reached():
                # interrupted: checkpoint this step as it is; validation stays on its schedule
                reason = self._stopping
                if self._saved_step != p.step:
                    self.save()
            elif not p.history or p.history[-1]["step"] != p.step:
                self._validate_and_save(loss, writer)  # the budget ends between validations
            writer.flush()
        return reason


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"

