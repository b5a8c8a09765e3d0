"""The `textgen` command line: parses options and delegates; no logic lives here.

TensorFlow is imported only inside the commands, so `textgen --help` answers instantly.
Option defaults come from the config dataclasses in `textgen.config`.
"""

from __future__ import annotations

import functools
import os
import sys

import click

from textgen import __version__
from textgen.config import (CELL_NAMES, EXPORT_FORMATS, HEAD_BIASES, INT32_MAX, MAX_SAMPLES, PRECISIONS, PRESETS, QUANTIZATIONS,
                            SHORTLIST, STRATEGIES,
                            VIZ_FORMATS, ExportConfig, FinetuneConfig, ModelConfig, SampleConfig, ServeConfig, TrainConfig, VizConfig, apply_preset)
from textgen.errors import TextgenError, one_line

RUNS_DIR = "checkpoints"
CORPUS_DIR = "corpora"
_M, _T, _S, _E, _V, _SV = ModelConfig(), TrainConfig(), SampleConfig(), ExportConfig(), VizConfig(), ServeConfig()


def user_errors(func):
    """Turn TextgenError into `Error: ...` on stderr and exit code 2, without a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from textgen.signals import Aborted

        try:
            return func(*args, **kwargs)
        except TextgenError as e:
            click.echo(f"Error: {one_line(e)}", err=True)
            sys.exit(e.exit_code)
        except Aborted as e:  # a second Ctrl-C / SIGTERM while a first one was being handled
            click.echo(f"Aborted by a second {e.signal_name}; the run keeps its last complete "
                       "checkpoint", err=True)
            sys.exit(e.exit_code)

    return wrapper


def warn(message: str) -> None:
    """A warning on stderr, one line, that does not stop the command."""
    click.echo(f"Warning: {one_line(message)}", err=True)


def run_argument(func):
    """RUN: a run name under --runs-dir, a path, or `latest` (the default)."""
    return click.argument("run", required=False, metavar="[RUN]")(func)


def runs_dir_option(func):
    return click.option("--runs-dir", default=RUNS_DIR, show_default=True,
                        help="Where run directories live.")(func)


def checkpoint_option(func):
    return click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best",
                        show_default=True, help="Which checkpoint of the run to load.")(func)


# `train --help` lists its options in these groups, in this order (the README's Training table
# has the same groups); an option in none of them goes under "Other options".
TRAIN_OPTION_GROUPS = {
    "Model": ["preset", "cell", "init_from", "init_checkpoint", "units", "num_layers", "embedding_dim",
              "head_shortlist", "head_bias"],
    "Regularisation": ["dropout", "embedding_dropout", "recurrent_dropout", "weight_decay"],
    "Optimisation": ["batch_size", "seq_len", "learning_rate", "clip_norm", "warmup_steps", "lr_decay",
                     "min_lr_ratio", "seed"],
    "Budget": ["epochs", "steps", "minutes", "patience"],
    "Data": ["encoding", "min_count", "val_fraction"],
    "Run": ["name", "resume", "runs_dir", "allow_corpus_change", "eval_every", "eval_batches",
            "log_every", "keep", "quiet"],
    "Devices": ["strategy", "precision"],
}


class GroupedOptions(click.Command):
    """A command whose --help lists its options in titled groups (`option_groups`: title ->
    parameter names). Hand-written because click has no option groups, and 20 lines do not
    warrant a dependency (click-option-group) for it."""

    def __init__(self, *args, option_groups: dict[str, list[str]], **kwargs):
        super().__init__(*args, **kwargs)
        self.option_groups = option_groups

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        records = {p.name: p.get_help_record(ctx) for p in self.get_params(ctx)}
        grouped = {name for names in self.option_groups.values() for name in names}
        sections = [(title, [records[n] for n in names if records.get(n)])
                    for title, names in self.option_groups.items()]
        sections.append(("Other options", [r for n, r in records.items() if r and n not in grouped]))
        for title, rows in sections:
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


def preset_help() -> str:
    """What each preset of `config.PRESETS` sets, as the options it stands for."""
    described = []
    for name, preset in PRESETS.items():
        options = {**preset["model"], **preset["train"]}
        described.append(f"{name} = " + " ".join(f"--{k.replace('_', '-')} {v:g}" if isinstance(v, float)
                                                 else f"--{k.replace('_', '-')} {v}"
                                                 for k, v in options.items()))
    return ("A named shape and recipe; options given explicitly override it. "
            + "; ".join(described) + ".")


def given(ctx: click.Context, names) -> dict:
    """The options among `names` that the user set on the command line (not defaulted)."""
    source = click.core.ParameterSource.DEFAULT
    return {n: ctx.params[n] for n in names if ctx.get_parameter_source(n) != source}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="textgen")
def main():
    """Character-level text generation with a hand-written LSTM.

    \b
      textgen train corpus.txt        train a model on your text
      textgen train                   train on the built-in Python-source corpus
      textgen sample --temp 0.8       generate text from the latest run
    """


@main.command(cls=GroupedOptions, option_groups=TRAIN_OPTION_GROUPS)
@click.argument("corpus", nargs=-1, type=click.Path())
@click.option("--name", help="Run name under --runs-dir (default: a timestamp; with --resume: the latest run).")
@click.option("--resume", is_flag=True, help="Continue the run given by --name (default: the latest) where it stopped.")
@click.option("--runs-dir", default=RUNS_DIR, show_default=True, help="Where run directories live.")
@click.option("--cell", type=click.Choice(CELL_NAMES), default=_M.cell, show_default=True, help="Recurrent cell: lstm (the textbook equations), peephole (its gates also read the cell state), cifg (input gate = 1 - forget gate: a quarter fewer gate weights), gru (Keras's reset_after GRU: state h alone, three gate blocks); for experiments, Greff's ablations nfg (forget gate fixed at 1) and noaf (h = o * C, no tanh). A run keeps its cell when resumed.")
@click.option("--embedding-dim", type=click.IntRange(1), default=_M.embedding_dim, show_default=True, help="Size of the character embedding.")
@click.option("--units", type=click.IntRange(1), default=_M.units, show_default=True, help="LSTM units per layer.")
@click.option("--num-layers", type=click.IntRange(1), default=_M.num_layers, show_default=True, help="Stacked LSTM layers.")
@click.option("--preset", type=click.Choice(sorted(PRESETS)), help=preset_help())
@click.option("--init-from", metavar="RUN", help=f"Fine-tune: start from RUN's model and weights (its shape; a --preset's shape does not apply) with a fresh optimizer and schedule; its vocabulary gains the corpus's new characters. The learning rate defaults to {FinetuneConfig.learning_rate:g} here.")
@click.option("--checkpoint", "init_checkpoint", type=click.Choice(["best", "last"]), help=f"With --init-from: which checkpoint of RUN to start from (default: {FinetuneConfig.checkpoint}).")
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=_M.dropout, show_default=True, help="Dropout between layers.")
@click.option("--recurrent-dropout", type=click.FloatRange(0, 1, max_open=True), default=_M.recurrent_dropout, show_default=True, help="Dropout on each LSTM's recurrent input h(t-1), one mask for all time steps of a window (variational).")
@click.option("--head-shortlist", type=click.IntRange(0), default=_M.head_shortlist, help=f"Output layer: 0 = one softmax over the vocabulary; N = a two-level softmax, the N most frequent characters at every position and the rest only where the next character is one of them (exact, faster for thousands of characters). Default: {SHORTLIST} for vocabularies over {2 * SHORTLIST}, else 0.")
@click.option("--embedding-dropout", type=click.FloatRange(0, 1, max_open=True), default=_M.embedding_dropout, show_default=True, help="Dropout on the embedding output.")
@click.option("--batch-size", type=click.IntRange(1), default=_T.batch_size, show_default=True, help="Parallel text streams per step.")
@click.option("--seq-len", type=click.IntRange(1), default=_T.seq_len, show_default=True, help="Characters per window (BPTT length).")
@click.option("--learning-rate", "--lr", type=click.FloatRange(0, min_open=True), default=_T.learning_rate, show_default=True, help=f"Adam learning rate (peak, after warm-up; {FinetuneConfig.learning_rate:g} with --init-from).")
@click.option("--warmup-steps", type=click.IntRange(0), default=_T.warmup_steps, show_default=True, help="Linear learning-rate warm-up steps.")
@click.option("--lr-decay", type=click.Choice(["cosine", "none"]), default=_T.lr_decay, show_default=True, help="Learning-rate decay over the budget.")
@click.option("--min-lr-ratio", type=click.FloatRange(0, 1), default=_T.min_lr_ratio, show_default=True, help="Final learning rate as a fraction of --learning-rate.")
@click.option("--patience", type=click.IntRange(1), default=_T.patience, help="Stop after this many validations without a new best.")
@click.option("--weight-decay", type=click.FloatRange(0), default=_T.weight_decay, show_default=True, help="Decoupled weight decay (AdamW) of the LSTM and output kernels (0: plain Adam).")
@click.option("--clip-norm", type=click.FloatRange(0), default=_T.clip_norm, show_default=True, help="Clip gradients to this global norm (0: off).")
@click.option("--epochs", type=click.IntRange(1), default=_T.epochs, help="Stop after this many epochs in all.")
@click.option("--steps", type=click.IntRange(1), default=_T.steps, help="Stop after this many steps in all.")
@click.option("--minutes", type=click.FloatRange(0, min_open=True), default=_T.minutes, help="Stop after this many minutes (this session).")
@click.option("--val-fraction", type=float, default=_T.val_fraction, show_default=True, help="Tail of the corpus held out for validation.")
@click.option("--eval-every", type=click.IntRange(1), default=_T.eval_every, show_default=True, help="Steps between validations and checkpoints.")
@click.option("--eval-batches", type=click.IntRange(1), default=_T.eval_batches, show_default=True, help="Validation windows per evaluation.")
@click.option("--log-every", type=click.IntRange(1), default=_T.log_every, show_default=True, help="Steps between reads of the loss (progress bar, TensorBoard, divergence guard).")
@click.option("--keep", type=click.IntRange(1), default=_T.keep, show_default=True, help="Newest checkpoints to keep (plus the best).")
@click.option("--seed", type=int, default=_T.seed, show_default=True, help="Random seed.")
@click.option("--strategy", type=click.Choice(STRATEGIES), default=_T.strategy, show_default=True, help="Devices to train on: auto (all GPUs if several, else one device), single, mirrored (all local GPUs) or multiworker (hosts from TF_CONFIG).")
@click.option("--precision", type=click.Choice(PRECISIONS), default=_T.precision, show_default=True, help="Arithmetic: auto (mixed 16-bit on GPUs with tensor cores and on x86 CPUs with native bfloat16, avx512_bf16 or amx_bf16; float32 elsewhere; `textgen info` says why), float32, or mixed_* (16-bit arithmetic; weights, logits and loss stay float32). A run keeps its precision when resumed.")
@click.option("--encoding", default=_T.encoding, show_default=True, help="Text encoding of the corpus files.")
@click.option("--min-count", type=click.IntRange(1), default=_T.min_count, show_default=True, help="Characters occurring fewer times in the corpus become one unknown symbol (1: keep all).")
@click.option("--head-bias", type=click.Choice(HEAD_BIASES), default=_T.head_bias, show_default=True, help="How the output layer's bias starts: unigram (the log character frequencies of the training text) or zeros.")
@click.option("--allow-corpus-change", is_flag=True, help="With --resume: train on the corpus even though its text changed since the run started.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
@user_errors
def train(ctx, corpus, name, resume, runs_dir, quiet, preset, allow_corpus_change, init_from,
          init_checkpoint, **_options):
    """Train a model on CORPUS files or directories (default: the built-in corpus).

    Without --epochs, --steps or --minutes it trains for 10 epochs. Progress goes to a bar,
    TensorBoard events to RUNS_DIR/<run>/train and /validation (`tensorboard --logdir checkpoints`).
    """
    from textgen.launch import BUDGET_SPENT, launch

    model_options = given(ctx, [f.name for f in _fields(ModelConfig) if f.name != "vocab_size"])
    train_options = given(ctx, [f.name for f in _fields(TrainConfig)])
    if init_from is None:
        model_options, train_options = apply_preset(preset, model_options, train_options)
    else:  # the model's shape is the base run's
        from textgen.finetune import preset_options

        model_options, train_options = preset_options(preset, model_options, train_options)
    run_dir, reason, progress = launch(
        list(corpus), model_options, train_options, runs_dir, name=name, resume=resume,
        corpus_dir=CORPUS_DIR, show_progress=not quiet, echo=lambda s: click.echo(s, err=True),
        allow_corpus_change=allow_corpus_change, init_from=init_from, init_checkpoint=init_checkpoint,
    )
    if reason == BUDGET_SPENT:  # launch said so in one line; nothing was trained
        return
    best = "-" if progress.best_val_bpc is None else f"{progress.best_val_bpc:.4f}"
    click.echo(f"stopped ({reason}) at step {progress.step}; best validation bpc {best}; run: {run_dir}", err=True)
    if reason not in ("budget", "early stopping"):
        click.echo(f"resume with: textgen train --resume --name {run_dir.name} --runs-dir {runs_dir}", err=True)


@main.command()
@run_argument
@runs_dir_option
@checkpoint_option
@click.option("--temp", "temperature", type=float, default=_S.temperature, show_default=True, help="Sampling temperature; 0 is greedy argmax. Range: 0 or more.")
@click.option("--length", type=int, default=_S.length, show_default=True, help=f"Characters to generate. Range: 0 to {INT32_MAX:,}.")
@click.option("--prime", default=_S.prime, help="Text fed to the model first, then echoed.")
@click.option("--seed", type=int, default=_S.seed, help="Random seed: same seed, same text.")
@click.option("--top-k", type=int, default=_S.top_k, show_default=True, help=f"Sample among the k likeliest characters (0: off). Range: 0 to {INT32_MAX:,}.")
@click.option("--top-p", type=float, default=_S.top_p, show_default=True, help="Sample among the likeliest characters holding this much probability (1: off). Range: above 0, at most 1.")
@click.option("--num-samples", type=int, default=_S.num_samples, show_default=True, help=f"Independent samples to generate. Range: 1 to {MAX_SAMPLES:,}.")
@user_errors
def sample(run, runs_dir, checkpoint, **options):
    """Generate text from RUN (a name under --runs-dir, a path, or `latest`: the default)."""
    config = SampleConfig(**options)  # validated here, before TensorFlow and the model load
    from textgen.sample import sample_run

    sample_run(run, runs_dir, checkpoint, config, out=sys.stdout, warn=warn)


@main.command("eval")
@click.argument("arguments", nargs=-1, required=True, metavar="[RUN] FILE...")
@runs_dir_option
@checkpoint_option
@click.option("--encoding", default=_T.encoding, show_default=True, help="Text encoding of FILES.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@user_errors
def eval_command(arguments, runs_dir, checkpoint, encoding, quiet):
    """Bits per character and perplexity of RUN on each FILE (or directory), and in total, with
    the characters skipped as unknown to the model (count and share).

    \b
    RUN is a run name under --runs-dir, a run directory, or `latest`. Without RUN, the latest run
    scores the files. How the first argument is read:
      - a single argument is always the text (`textgen eval held-out.txt`);
      - with several, the first is RUN when it names a run and is not a file (a run is a
        directory, so a file is always text); a directory of text that has a run's name is read
        as the run (a warning says so): write `textgen eval latest DIR` to score it.
    """
    from textgen.evaluate import describe, evaluate_files, split_arguments

    run, files = split_arguments(list(arguments), runs_dir, warn)
    report = evaluate_files(run, runs_dir, checkpoint, files, encoding, show_progress=not quiet, warn=warn)
    click.echo(describe(report))


@main.command()
@run_argument
@runs_dir_option
@user_errors
def info(run, runs_dir):
    """Shape, parameter count, progress, best validation bpc and corpus of RUN (default: latest)."""
    from textgen.info import describe_run

    click.echo(describe_run(run, runs_dir))


@main.command("export")
@run_argument
@click.option("--format", "export_format", required=True, metavar="|".join(EXPORT_FORMATS), help="savedmodel (TensorFlow, TF Serving), litert (.tflite), onnx, or keras (.keras).")
@click.option("--out", required=True, type=click.Path(), help="Directory to write the export into (new, empty, or an earlier export, which is replaced).")
@checkpoint_option
@click.option("--quantize", default=_E.quantize, show_default=True, metavar="|".join(QUANTIZATIONS), help="litert only: dynamic stores int8 weights (about 4x smaller).")
@click.option("--eval-text", type=click.Path(), help="Text to check the export on (and to measure a quantized one's bits per character); default: text sampled from the model.")
@runs_dir_option
@user_errors
def export_command(run, export_format, out, checkpoint, quantize, eval_text, runs_dir):
    """Export RUN (default: latest) for TensorFlow/TF Serving, LiteRT, ONNX or Keras.

    Writes the model, vocab.json (id -> character) and a README.md of its inputs and outputs
    into OUT, after checking that the export computes the same logits as textgen.
    """
    config = ExportConfig(format=export_format, quantize=quantize, eval_text=eval_text)
    config.validate()  # before TensorFlow and the model load
    from textgen.export.command import describe, export_run

    click.echo(describe(export_run(run, runs_dir, checkpoint, config, out, warn=warn)))


@main.command()
@run_argument
@click.argument("file", required=False, type=click.Path(allow_dash=True))
@runs_dir_option
@checkpoint_option
@click.option("--prime", help="Trace this text (with --sample: start the sample with it).")
@click.option("--sample", "sample_length", type=click.IntRange(1),
              help="Trace N characters the model samples itself.")
@click.option("--seed", type=int, help="Random seed for --sample: same seed, same text.")
@click.option("--temp", "temperature", type=float, default=_V.temperature, show_default=True,
              help="Sampling temperature for --sample; 0 is greedy.")
@click.option("--out", help="Output file.  [default: viz.html, viz.json or viz.npz]")
@click.option("--format", "fmt", type=click.Choice(VIZ_FORMATS), default=_V.format, show_default=True,
              help="html: the page; json or npz: the raw trace.")
@click.option("--max-chars", type=click.IntRange(1), default=_V.max_chars, show_default=True,
              help="Cut longer texts to this many characters.")
@click.option("--max-mb", type=click.FloatRange(0, min_open=True), default=_V.max_mb, show_default=True,
              help="Size budget of the page: its precision, then its length, give way.")
@click.option("--top-k", type=click.IntRange(1), default=_V.top_k, show_default=True,
              help="Next-character guesses kept per character.")
@click.option("--encoding", default=_T.encoding, show_default=True, help="Text encoding of FILE.")
@user_errors
def viz(run, file, runs_dir, checkpoint, prime, sample_length, seed, out, encoding, fmt, **options):
    """Trace FILE (or --prime TEXT, or --sample N) through RUN: every gate, cell and guess, as a page.

    \b
    Writes one self-contained HTML file (opens from disk, no network) and prints its path.
    With a single argument that is an existing file, it is FILE and RUN is the latest run.
    """
    from textgen.viz.command import run_viz

    config = VizConfig(format=fmt, **options)
    click.echo(run_viz(run, file, runs_dir, checkpoint, config, out=out, prime=prime,
                       sample=sample_length, seed=seed, encoding=encoding, warn=warn))

@main.command()
@click.argument("runs", nargs=-1, metavar="[RUN]...")
@runs_dir_option
@checkpoint_option
@click.option("--host", default=_SV.host, show_default=True, help="Address to listen on; 127.0.0.1 is this machine only (give 0.0.0.0 to open it to the network).")
@click.option("--port", type=int, default=_SV.port, show_default=True, help="Port to listen on (0: any free port).")
@click.option("--allow-host", multiple=True, default=_SV.allow_host, metavar="NAME", help="Answer requests addressed to NAME too (a Host header beside 127.0.0.1, localhost, [::1] and --host); repeatable; '*' turns the check off.")
@click.option("--allow-origin", multiple=True, default=_SV.allow_origin, metavar="ORIGIN", help="Let web pages from ORIGIN (such as https://app.example.com) call the API; repeatable. Pages from other sites are refused.")
@click.option("--api-key", envvar="TEXTGEN_API_KEY", show_envvar=True, default=_SV.api_key, metavar="KEY", help="Require 'Authorization: Bearer KEY' on the API (/v1/); give it through the environment variable, which ps does not show. Use it whenever --host is not 127.0.0.1.")
@click.option("--log-requests", is_flag=True, default=_SV.log_requests, help="Print one line per request: time, method, path, status, characters generated, milliseconds.")
@click.option("--max-batch", type=int, default=_SV.max_batch, show_default=True, help="Choices generated side by side in one compiled loop.")
@click.option("--max-queue", type=int, default=_SV.max_queue, show_default=True, help="Choices that may wait for a free slot; beyond, requests get HTTP 429.")
@click.option("--max-prompt", type=int, default=_SV.max_prompt, show_default=True, help="Most characters in one prompt.")
@click.option("--max-tokens", type=int, default=_SV.max_tokens, show_default=True, help="Most characters one choice may ask for (max_tokens).")
@click.option("--max-n", type=int, default=_SV.max_n, show_default=True, help="Most choices in one request (n x prompts).")
@click.option("--max-trace", type=int, default=_SV.max_trace, show_default=True, help="Most characters one /v1/trace request traces (the playground's colouring by a cell).")
@user_errors
def serve(runs, runs_dir, checkpoint, **options):
    """Serve RUNs (default: the latest) over HTTP: an OpenAI-compatible completions API and a
    playground page at http://HOST:PORT/. Concurrent requests share one compiled sampling loop."""
    config = ServeConfig(**options)
    config.validate()  # before TensorFlow and the models load
    try:
        from textgen.serve.command import serve_runs
    except ModuleNotFoundError as e:  # Starlette or uvicorn uninstalled after textgen was
        raise TextgenError(f"textgen serve needs the Python package {e.name!r}; install it with "
                           f"pip install {e.name}") from None

    serve_runs(list(runs), runs_dir, checkpoint, config, echo=click.echo,
               log=lambda message: click.echo(message, err=True), warn=warn)


def _fields(cls):
    import dataclasses

    return dataclasses.fields(cls)


def entry() -> None:
    """Console entry point: `main`, with TensorFlow's native log lines kept off the terminal, and
    a one-line report should TensorFlow crash natively (`textgen.crashwatch`)."""
    if not _help_only(sys.argv[1:]) and not os.environ.get("TEXTGEN_TF_LOGS"):
        routed = _route_native_stderr()
        if routed:
            from textgen.crashwatch import watch

            watch(*routed)
    main()


def _route_native_stderr() -> tuple[str, int] | None:
    """Send file descriptor 2 (where TensorFlow's C++ code logs) to a log file, keep Python's
    sys.stderr (errors, progress bar) on the terminal.

    TensorFlow 2.21 prints oneDNN/CUDA notices through absl before its logging is initialised,
    which TF_CPP_MIN_LOG_LEVEL does not silence. Set TEXTGEN_TF_LOGS=1 to see them.
    The log is a new private file per process (`tempfile.mkstemp`: O_CREAT | O_EXCL, mode 0600),
    so a symlink planted in the shared temporary directory is never followed and two textgen
    processes never write into each other's log; `crashwatch` removes it when the process ends
    normally and names it when it does not.
    Returns (the log's path, the terminal's new descriptor), or None if nothing was routed.
    """
    import tempfile

    user = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")  # POSIX / Windows
    try:
        log, path = tempfile.mkstemp(prefix=f"textgen-tensorflow-{user}-", suffix=".log")
    except OSError:
        return None
    sys.stderr.flush()
    terminal = os.dup(2)
    os.dup2(log, 2)
    os.close(log)
    sys.stderr = os.fdopen(terminal, "w", buffering=1, encoding=sys.stderr.encoding,
                           errors="backslashreplace")
    return path, terminal


def _help_only(args: list[str]) -> bool:
    return not args or any(a in ("-h", "--help", "--version") for a in args)


if __name__ == "__main__":
    entry()
