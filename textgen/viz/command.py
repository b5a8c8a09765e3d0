"""`textgen viz`: trace a text through a run's model and write the page, or the raw trace.

The text is a file (read in blocks, stopping after `max_chars` characters the model knows), a
prime, or characters the model samples itself. Characters outside the vocabulary are skipped
and reported; a longer text is cut with a notice. Everything about the output is checked before
the model loads, and the file is written atomically.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable

from textgen.config import SampleConfig, VizConfig, check_seed, seed_or_random
from textgen.errors import TextgenError, os_reason


def resolve_positionals(run: str | None, file: str | None) -> tuple[str | None, str | None]:
    """`textgen viz X`: X is the FILE (with the latest run) when it is "-" or an existing file,
    since a run is always a directory; otherwise it is the RUN."""
    if file is None and run is not None and (run == "-" or Path(run).is_file()):
        return None, run
    return run, file


def output_path(out: str | None, fmt: str) -> Path:
    """The output file (default `viz.<format>`), refused now if it cannot be written."""
    path = Path(out if out is not None else f"viz.{fmt}")
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise TextgenError(f"--out {path} is a directory; give a file name such as {path / ('viz.' + fmt)}")
    if not parent.is_dir():
        raise TextgenError(f"cannot write --out {path}: directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise TextgenError(f"cannot write --out {path}: permission denied; choose another --out")
    return path


def check_source(file: str | None, prime: str | None, sample: int | None, seed: int | None) -> None:
    """Exactly one text source, and an accepted sampling seed (before the model loads)."""
    if file is not None and (prime is not None or sample is not None):
        raise TextgenError("give either FILE or --prime/--sample, not both")
    if file is None and prime is None and sample is None:
        raise TextgenError("nothing to trace: give a FILE, --prime TEXT or --sample N")
    if file not in (None, "-") and not Path(file).exists():
        raise TextgenError(f"file not found: {file}")
    if prime == "" and sample is None:
        raise TextgenError("nothing to trace: --prime is empty; give some text")
    if seed is not None:
        check_seed(seed)


def gather_text(blocks: Iterable[str], vocab, max_chars: int) -> tuple[str, Counter, bool]:
    """The first `max_chars` characters of `blocks` that `vocab` knows, the characters skipped
    on the way, and whether there was more. Stops reading once it has enough."""
    from textgen.trace import known_text

    kept, skipped, count = [], Counter(), 0
    for block in blocks:
        block, unknown = known_text(vocab, block)
        skipped += unknown
        kept.append(block)
        count += len(block)
        if count > max_chars:
            return "".join(kept)[:max_chars], skipped, True
    return "".join(kept), skipped, False


def stdin_blocks(encoding: str, block_chars: int = 1 << 20) -> Iterable[str]:
    """Standard input decoded with `encoding`, in blocks; a one-line error if it does not decode."""
    import io

    from textgen.corpus import check_encoding

    check_encoding(encoding)  # the one check every command makes
    raw = getattr(sys.stdin, "buffer", None)
    stream = io.TextIOWrapper(raw, encoding=encoding) if raw is not None else sys.stdin
    try:
        yield from iter(lambda: stream.read(block_chars), "")
    except UnicodeDecodeError as e:
        raise TextgenError(f"standard input is not valid {encoding} ({e.reason}); "
                           "pass --encoding to read it with another encoding") from None
    finally:
        if raw is not None:
            stream.detach()  # closing the wrapper would close standard input itself


def source_text(loaded, file, prime, sample, seed, temperature, encoding, max_chars):
    """(text, skipped Counter, description, notices) for the chosen source."""
    from textgen.corpus import iter_text
    from textgen.sample import generate_text

    notices = []
    if file == "-":
        text, skipped, cut = gather_text(stdin_blocks(encoding), loaded.vocab, max_chars)
        description = "standard input"
    elif file is not None:
        text, skipped, cut = gather_text(iter_text([file], encoding), loaded.vocab, max_chars)
        description = str(file)
    else:
        text, skipped, cut = gather_text([prime or ""], loaded.vocab, max_chars)
        description = "--prime"
        if sample is not None:
            seed = seed_or_random(seed)
            length = max(0, min(sample, max_chars - len(text)))
            config = SampleConfig(temperature=temperature, length=length, prime=text, seed=seed)
            text = generate_text(loaded.model, loaded.vocab, config)[0]
            cut = cut or length < sample
            description = (f"{length:,} characters sampled{' after --prime' if prime else ''}, "
                           f"temperature {temperature:g}, seed {seed}")
    if cut:
        notices.append(f"cut to the first {max_chars:,} characters (--max-chars)")
    if skipped:
        shown = " ".join(f"{ch!r} x{n:,}" for ch, n in skipped.most_common(10))
        notices.append(f"skipped {sum(skipped.values()):,} characters not in the vocabulary: {shown}")
    if not text:
        reason = " (all of them are outside the model's vocabulary)" if skipped else ""
        raise TextgenError(f"nothing to trace: the text from {description} is empty{reason}; "
                           "give text the model was trained on")
    return text, skipped, description, notices


def run_viz(run: str | None, file: str | None, runs_dir: str, checkpoint: str, config: VizConfig,
            out: str | None = None, prime: str | None = None, sample: int | None = None,
            seed: int | None = None, encoding: str = "utf-8",
            warn: Callable[[str], None] | None = None) -> Path:
    """Trace a text through a run's model and write it: the entry point of `textgen viz`.

    The text comes from `file` ("-": standard input), `prime`, or `sample` characters the model
    generates (with `seed`); every gate, C and h of every layer at every character is recorded
    (`textgen.trace.trace_text`) and written as `config.format`: the self-contained HTML page,
    JSON or npz.

    Args:
        run: a run name, a run directory, "latest", or None for the latest run.
        file: the text file to trace, "-" for standard input, or None (then `prime`/`sample`).
        runs_dir: where runs are looked up by name.
        checkpoint: "best" or "last".
        config: the trace's settings (`textgen.config.VizConfig`: format, max_chars, top_k, ...).
        out: the path to write, or None for a default name beside the working directory.
        prime, sample, seed: trace `prime`, or `sample` generated characters after it.
        encoding: the text file's encoding.
        warn: gets notices (out-of-vocabulary characters skipped, a page cut to --max-mb).

    Returns:
        The path written. Bad input raises `TextgenError` (one line).

    Example:

        path = run_viz("my-run", "poem.txt", "runs", "best", VizConfig(format="html"))
    """
    warn = warn or (lambda _: None)
    config.validate()
    run, file = resolve_positionals(run, file)
    check_source(file, prime, sample, seed)
    path = output_path(out, config.format)
    if file not in (None, "-") and path.exists() and path.resolve() == Path(file).resolve():
        raise TextgenError(f"--out {path} is the text being traced; choose another --out")
    from textgen.inference import load_run
    from textgen.trace import trace_text, unit_weights

    loaded = load_run(run, runs_dir, checkpoint, warn=warn)
    text, skipped, description, notices = source_text(
        loaded, file, prime, sample, seed, config.temperature, encoding, config.max_chars)
    for notice in notices:
        warn(notice)
    trace = trace_text(loaded.model, loaded.vocab, text, top_k=config.top_k, window=config.window)
    trace.skipped = skipped
    header = describe_trace(trace, loaded.name, loaded.checkpoint.name, description, notices)
    header["unit_weights"] = unit_weights(loaded.model)
    write_trace(trace, header, path, config, warn)
    return path


def describe_trace(trace, run: str, checkpoint: str, source: str, notices: list[str]) -> dict:
    """The header every output format carries: where the trace came from, the model's cell kind
    and the quantities each layer holds (`cell.quantities`), and the ranked cells."""
    from textgen.cell_features import rank_cells

    return {"run": run, "checkpoint": checkpoint, "source": source, "notices": list(notices),
            "cell": trace.cell.name, "quantities": list(trace.quantities),
            "quantity_names": dict(trace.cell.quantity_names), "sigmoid_gates": list(trace.cell.sigmoid_gates),
            "unit_weight_rows": {name: list(rows) for name, rows in trace.cell.extra_rows.items()},
            "cells": rank_cells(trace.chars, trace.layers, quantities=trace.cell.state_names)}


def write_trace(trace, header: dict, path: Path, config: VizConfig,
                warn: Callable[[str], None] | None = None) -> None:
    """Write the page (`config.format` html) or the raw trace (json, npz) to `path`."""
    try:
        if config.format == "html":
            write_page(trace, header, path, config.max_mb, warn)
        elif config.format == "json":
            from textgen.viz.trace_files import write_trace_json

            write_trace_json(trace, path, header)
        else:
            from textgen.viz.trace_files import write_trace_npz

            write_trace_npz(trace, path, header)
    except OSError as e:
        raise TextgenError(f"cannot write --out {path}: {os_reason(e)}; choose another --out") from None


def write_page(trace, header: dict, path: Path, max_mb: float, warn=None) -> None:
    """Pack the trace into the page under `max_mb` and write it atomically."""
    from textgen.atomic import atomic_write_bytes
    from textgen.cell_features import FEATURES
    from textgen.trace import saturation
    from textgen.viz.page import cell_scale, fit_page, header_size, page_template, render_page

    template = page_template()
    header = {**header, "format": "textgen-viz", "version": 1, "vocab": trace.vocab_chars,
              "traced": len(trace), "layers": len(trace.layers),
              "units": int(trace.layers[0]["h"].shape[1]), "top_k": int(trace.top_ids.shape[1]),
              "features": FEATURES,
              "c_scale": [cell_scale(layer["c"]).tolist() if "c" in layer else [] for layer in trace.layers],
              "saturation": [{gate: [low.round(4).tolist(), high.round(4).tolist()]
                              for gate, (low, high) in saturation(layer, trace.cell).items()} for layer in trace.layers]}
    page = fit_page(trace, int(max_mb * 1e6), header_size(header, template))
    if page.length < len(trace):
        message = (f"the page shows the first {page.length:,} of {len(trace):,} characters traced, to stay "
                   f"under --max-mb {max_mb:g}; raise --max-mb, or use --format npz for all of them")
        header["notices"] = header["notices"] + [message]
        (warn or (lambda _: None))(message)
    atomic_write_bytes(path, render_page(header, page, template).encode("utf-8"))
