"""The trainer: truncated BPTT over contiguous streams, validation in bits per character,
checkpoints and resume, around the compiled steps of `textgen.steps`.

The loop is written by hand around one compiled `train_step` rather than `Model.fit`, because
the hidden state has to flow from each window into the next (and be saved and restored for an
exact resume); `fit` treats batches as independent. Keras still provides the layers, the Adam
optimizer and the weights format; `tf.data` feeds the windows. What happens besides the steps is
delegated: the rules (budget, early stopping, divergence, schedule length) are pure functions in
`textgen.policy`; the per-step side effects are hooks the loop calls (`TrainingBar` draws the
progress bar, `TensorBoardLog` writes TensorBoard events), each with `on_steps(step, train_loss,
chars_per_sec, learning_rate)`, `on_validation(step, val_bpc, trainer)` and `close()`.

The loop reads the losses back every `log_every` steps (and before each validation), not after
every step: that is where the divergence guard looks and the hooks run, so a diverging run stops
at most `log_every` steps after its loss goes bad, without a checkpoint of the bad weights.

Stopping: SIGINT/SIGTERM set a flag checked after every step (`textgen.signals`), so the step
finishes, a checkpoint of it is written (without an extra validation, so the validation history
of an interrupted run is the same as one trained in one go) and `run` returns the signal's name.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from textgen import checkpoint as ckpt
from textgen import policy, runformat, runs
from textgen.config import LN2, ModelConfig, TrainConfig
from textgen.data import StreamBatcher, log_frequencies
from textgen.errors import TextgenError
from textgen.model import flatten_state
from textgen.progress import Progress, progress_problem
from textgen.signals import StopRequest
from textgen.steps import build_training, compile_eval_step, compile_train_step
from textgen.vocab import Vocabulary



def loss_fn(logits, targets):
    """Mean cross-entropy in nats. logits: (batch, time, vocab); targets: (batch, time)."""
    return tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits)
    )


class Trainer:
    """One training run: its model and optimizer (`textgen.steps.Training`), data, progress and
    run directory; `run` is the training loop.

    Args:
        run_dir: the run directory (checkpoints, run.json).
        vocab: the corpus's `Vocabulary`.
        train_data, val_data: `StreamBatcher`s of the training and validation ids.
        model_config, train_config: the run's configs.
        meta: run.json's contents (updated at every checkpoint).
        chief: whether this process writes the run (False for the other workers of a
            multi-worker run, which train in step with the chief and write nothing).

    `run()` trains and returns why it stopped; `restore(ckpt_dir)` resumes from a checkpoint
    (weights, optimizer slots, the carried state, progress) before it.

    Example (what `textgen.launch` does for `textgen train`):

        vocab, config = Vocabulary.from_text(text), TrainConfig(steps=500)
        train_data, val_data = make_batchers(vocab.encode(text), config.batch_size, config.seq_len,
                                             config.val_fraction)          # textgen.data
        model_config = ModelConfig(vocab_size=vocab.size)
        run_dir = Path("runs/demo")
        run_dir.mkdir(parents=True)
        trainer = Trainer(run_dir, vocab, train_data, val_data, model_config, config,
                          meta={"model": model_config, "train": config, "checkpoints": {}})
        reason = trainer.run()   # "budget", "early stopping" or a signal's name
    """

    def __init__(self, run_dir: Path, vocab: Vocabulary, train_data: StreamBatcher,
                 val_data: StreamBatcher, model_config: ModelConfig, train_config: TrainConfig,
                 meta: dict, chief: bool = True):
        self.training = build_training(model_config, train_config)  # before any other TF op
        self.model, self.optimizer = self.training.model, self.training.optimizer
        self.replicas, self.threads = self.training.replicas, self.training.threads
        self.run_dir, self.vocab, self.meta, self.chief = run_dir, vocab, meta, chief
        self.model_config, self.config = model_config, train_config
        self.train_data, self.val_data = train_data, val_data
        self.train_step = compile_train_step(self.training)
        self.eval_step = compile_eval_step(self.model)
        self.progress = Progress()
        self.carried = self._zero_carry()  # flat [h0, c0, h1, c1, ...] (the cell's states), per replica
        self._saved_step: int | None = None  # step of the checkpoint last written or restored
        self._out_of_time = False  # the --minutes budget is spent (agreed between workers)
        self._stopping: str | None = None  # why the loop stops early (agreed between workers)

    def start_output_layer(self, counts: np.ndarray, unigram: bool) -> None:
        """Fit the output layer to the training text's character `counts` (vocab,) before the
        first step (`CharLSTM.start_output_layer`); with `unigram` (--head-bias unigram) the
        model predicts the character frequencies from its first step."""
        self.model.start_output_layer(counts, log_frequencies(counts) if unigram else None)

    # ------------------------------------------------------------------ carried state

    def _zero_carry(self) -> list:
        """Zero cell states for every row of the training batch, split across the replicas."""
        zeros = self.model.initial_state(self.config.batch_size)
        return self._scatter([t.numpy() for t in flatten_state(zeros)])

    def _scatter(self, arrays: list) -> list:
        """Global (batch, units) arrays -> per-replica states in the compute dtype."""
        dtype = self.model.compute_dtype
        return self.replicas.scatter([np.asarray(a, np.float32) for a in arrays], dtype=dtype)

    # ------------------------------------------------------------------ checkpoints

    def _arrays(self) -> dict:
        arrays = {runformat.optimizer_key(i): v.numpy() for i, v in enumerate(self.optimizer.variables)}
        carried = self.replicas.gather(self.carried)  # a collective under multiworker
        arrays.update({runformat.carry_key(i): a.astype(np.float32) for i, a in enumerate(carried)})
        return arrays

    def restore(self, ckpt_dir: Path) -> None:
        """Load weights, optimizer slots, carried state and progress from a checkpoint.

        The learning rate is the configured one (it may be lowered on resume, e.g. after a
        divergence), not the saved one."""
        ckpt.load_weights(self.model, ckpt_dir)
        state, arrays = ckpt.load_resume(ckpt_dir)
        problem = progress_problem(state.get("progress"), self.train_data.num_windows)
        if problem:
            raise TextgenError(f"{ckpt_dir / runformat.STATE_FILE} cannot be resumed ({problem}); "
                               "retrain or restore the run")
        try:
            for i, v in enumerate(self.optimizer.variables):
                v.assign(arrays[runformat.optimizer_key(i)])
            carried = len(self.model.cell_kind.state_names) * self.model_config.num_layers
            flat = [arrays[runformat.carry_key(i)] for i in range(carried)]
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
        runs.write_run_meta(self.run_dir, runformat.meta_to_json(self.meta))
        ckpt.prune_checkpoints(self.run_dir, self.config.keep, {checkpoints["best"], name})
        self._saved_step = self.progress.step
        return name

    def _diverged(self, what: str, step: int | None = None) -> TextgenError:
        """The one-line divergence error: what happened (at `step`, default the current one),
        what is kept, how to go on."""
        last = self.meta.get("checkpoints", {}).get("last")
        kept = (f"run {self.run_dir} keeps its last good checkpoint {last}" if last
                else "no checkpoint was written")
        lr = self.config.learning_rate
        lower = min(lr / 10, TrainConfig().learning_rate)
        return TextgenError(
            f"training diverged at step {step or self.progress.step}: {what}; {kept}; resume it with a "
            f"lower learning rate (it is {lr:g}): textgen train --resume --name {self.run_dir.name} "
            f"--runs-dir {self.run_dir.parent} --learning-rate {lower:.2g}"
        )

    # ------------------------------------------------------------------ validation

    def validate(self) -> float:
        """Validation bits per character over up to `eval_batches` consecutive windows."""
        states = flatten_state(self.model.initial_state(self.val_data.batch_size))
        total = 0.0
        count = min(self.val_data.num_windows, self.config.eval_batches)
        for k in range(count):
            x, y = self.val_data.window(k)
            loss, states = self.eval_step(tf.constant(x), tf.constant(y), states)
            total += float(loss)
        return total / count / LN2

    def _validate_and_save(self, train_loss: float | None, hooks: list) -> None:
        """Validate, record history (marking a new best), tell the hooks, checkpoint."""
        p = self.progress
        val_bpc = self.validate()
        problem = policy.divergence(val_bpc * LN2, self.vocab.size)
        if problem:
            raise self._diverged(f"the validation loss {problem}")
        p.history.append({"step": p.step, "epoch": p.epoch, "train_loss": train_loss,
                          "val_bpc": val_bpc})
        if p.best_val_bpc is None or val_bpc < p.best_val_bpc:
            p.best_val_bpc = val_bpc
            p.best_checkpoint = ckpt.checkpoint_name(p.step)
        for hook in hooks:
            hook.on_validation(p.step, val_bpc, self)
        self.save()

    # ------------------------------------------------------------------ the loop

    def _budget_reached(self) -> bool:
        c, p = self.config, self.progress
        return policy.budget_reached(p.step, p.epoch, c.steps, c.epoch_budget(), self._out_of_time)

    def _poll(self, stop: StopRequest, clock: "_Clock") -> None:
        """The stop vote: read the clock and the signal flag. Workers of a multi-worker run must
        stop at the same step (every step is a collective), so there a signal or the time limit
        on any worker stops them all. The loop acts on the agreed `_stopping`, never on the live
        flag: a signal landing just after a worker gave its vote must wait for the next poll, or
        that worker would stop one step before the others (and leave them in a collective)."""
        requested = stop.requested  # this worker's vote, read once
        minutes = self.config.minutes
        out_of_time = minutes is not None and clock.session_seconds() >= 60 * minutes
        signalled, out_of_time = self.replicas.any([bool(requested), out_of_time])
        if signalled:
            self._stopping = requested or "a signal to another worker"
        self._out_of_time = out_of_time

    def _size_schedule(self, clock: "_Clock", due: bool) -> None:
        """Under a --minutes budget, (re)estimate the schedule's length from this session's step
        time since compilation and its latest validation's duration: first after
        FIRST_ESTIMATE_AFTER steady steps, then at each read of the losses (`due`), so that when
        the machine's speed changes late in a run the estimate follows it to the end (re-estimated
        only at validations, a run that sped up after its last one ended its decay 5% early).
        Decided on step counts, so every worker takes part in the same agreement."""
        c, p = self.config, self.progress
        if not c.minutes or clock.steady_steps < policy.FIRST_ESTIMATE_AFTER:
            return
        if not (due or not clock.estimated):
            return
        clock.estimated = True
        estimate = policy.estimated_total_steps(
            p.step, clock.seconds_per_step(), clock.validation_seconds, c.eval_every,
            60 * c.minutes - clock.session_seconds())
        total = policy.total_steps(c.steps, c.epoch_budget(), self.train_data.num_windows)
        estimate = min(estimate, total) if total else estimate
        p.schedule_steps = int(self.replicas.agree(estimate, self.chief))  # one schedule for all
        self.training.schedule.set_decay_steps(p.schedule_steps)

    def _read_losses(self, pending: list, clock: "_Clock", hooks: list) -> float:
        """Read the losses of the steps run since the last read (one host transfer), stop on a
        diverged one, and tell the hooks. Returns their mean."""
        losses = tf.stack(pending).numpy() if len(pending) > 1 else np.array([float(pending[0])])
        for offset, loss in enumerate(losses):
            problem = policy.divergence(float(loss), self.vocab.size)
            if problem:
                bad_step = self.progress.step - len(losses) + offset + 1
                raise self._diverged(f"the training loss {problem}", bad_step)
        seconds = clock.lap(len(losses))
        self.progress.elapsed += seconds
        mean = float(losses.mean())
        chars = len(losses) * self.config.batch_size * self.config.seq_len
        learning_rate = float(self.optimizer.learning_rate)
        for hook in hooks:
            hook.on_steps(self.progress.step, mean, chars / max(seconds, 1e-9), learning_rate)
        pending.clear()
        return mean

    def now(self) -> float:
        """The clock of a --minutes budget and its schedule (monotonic seconds). A hook: the tests
        replace it with one that reads the step, to play a machine of known (changing) speed."""
        return time.monotonic()

    def run(self, hooks: list | None = None, stop: StopRequest | None = None) -> str:
        """Train until the budget is spent or a stop is requested; returns why it stopped
        ("budget", "early stopping", or a signal's name after a checkpoint of the current step).

        `hooks`: objects with on_steps/on_validation/close (default: none). `stop`: a
        StopRequest already installed by the caller; by default one is installed here."""
        c, p = self.config, self.progress
        hooks = hooks or []
        clock = _Clock(self.now)
        total = policy.total_steps(c.steps, c.epoch_budget(), self.train_data.num_windows)
        if total and not c.minutes:  # a step or epoch budget fixes the schedule's length now
            p.schedule_steps = total
        self.training.schedule.set_decay_steps(p.schedule_steps)
        reason, pending, train_loss = "budget", [], None
        self._stopping = None
        with contextlib.ExitStack() as stack:
            if stop is None:
                stop = stack.enter_context(StopRequest())
            for hook in hooks:
                stack.callback(hook.close)
            self._poll(stop, clock)
            while not self._stopping and not self._budget_reached():
                for x, y in self.train_data.dataset(p.window):
                    loss, self.carried = self.train_step(x, y, self.carried)
                    pending.append(loss)
                    p.step, p.window = p.step + 1, p.window + 1
                    validating = p.step % c.eval_every == 0
                    reading = validating or len(pending) >= c.log_every  # same steps on every worker
                    if reading:
                        train_loss = self._read_losses(pending, clock, hooks)
                    if validating:
                        self._validate_and_save(train_loss, hooks)  # every worker: a collective save
                        clock.validated()
                        if policy.patience_exhausted(p.history, c.patience):
                            self._stopping = "early stopping"  # same history on every worker
                    self._size_schedule(clock, reading)
                    self._poll(stop, clock)  # the stop vote: every worker, every step
                    if self._stopping or self._budget_reached():
                        break
                else:  # the epoch's windows are exhausted: next epoch starts from a zero state
                    p.epoch, p.window = p.epoch + 1, 0
                    self.carried = self._zero_carry()
            if pending:
                train_loss = self._read_losses(pending, clock, hooks)
            if self._stopping == "early stopping":
                reason = "early stopping"
            elif self._stopping and not self._budget_reached():
                # interrupted: checkpoint this step as it is; validation stays on its schedule
                reason = self._stopping
                if self._saved_step != p.step:
                    self.save()
            elif not p.history or p.history[-1]["step"] != p.step:
                self._validate_and_save(train_loss, hooks)  # the budget ends between validations
        return reason


class _Clock:
    """Wall-clock bookkeeping of one training session: its length, the laps between loss reads,
    the steady step time (laps after the first COMPILE_STEPS steps, which trace the graphs) and
    the duration of the latest validation (the session's first one compiles its functions, so it
    counts only until a second one is timed)."""

    def __init__(self, now=time.monotonic):
        self.now = now  # () -> seconds
        self.start = self.lap_start = now()
        self.steps = 0  # taken in this session
        self.steady_steps, self.steady_seconds = 0, 0.0
        self.validations, self.validation_seconds = 0, 0.0
        self.estimated = False  # whether the schedule was sized in this session
    def lap(self, steps: int) -> float:
        """Seconds since the previous lap: the time of the `steps` steps taken since then."""
        now = self.now()
        seconds, self.lap_start = now - self.lap_start, now
        if self.steps >= policy.COMPILE_STEPS:
            self.steady_steps += steps
            self.steady_seconds += seconds
        self.steps += steps
        return seconds

    def validated(self) -> None:
        """A validation (and checkpoint) just ended: time it, and start the next lap."""
        now = self.now()
        seconds, self.lap_start = now - self.lap_start, now
        self.validations += 1
        if self.validations > 1:  # the first one compiled the validation's functions
            self.validation_seconds = seconds

    def seconds_per_step(self) -> float:
        return self.steady_seconds / max(self.steady_steps, 1)

    def session_seconds(self) -> float:
        return self.now() - self.start
