"""`textgen export`: a trained run as a SavedModel, LiteRT flatbuffer, ONNX graph or Keras archive.

Every export is built in a staging directory beside `--out`, then checked: the export is loaded
with its own runtime, fed the same characters as textgen's model, and refused unless its logits
agree within `ExportConfig.tolerance` (a quantized LiteRT export reports its difference and its
bits per character instead). Only then is it renamed into place with `vocab.json`, a README.md
of its inputs and outputs, and `export.json` (the same facts for programs). An earlier export
at `--out` is replaced whole; any other non-empty directory is refused, so nothing else is lost.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from textgen.cell import config_cell
from textgen.config import ExportConfig, SampleConfig
from textgen.errors import TextgenError, os_reason
from textgen.export.check import (KERAS_FILE, LITERT_FILE, ONNX_FILE, bits_per_char, feed, open_runner,
                                  reference_logits)
from textgen.export.docs import MANIFEST_FILE, README_FILE, VOCAB_FILE, manifest, readme_text

# (module, pip package) that each format needs beyond TensorFlow and Keras, to convert and to run
RUNTIMES = {
    "litert": (("ai_edge_litert", "ai-edge-litert"),),
    "onnx": (("tf2onnx", "tf2onnx"), ("onnx", "onnx"), ("onnxruntime", "onnxruntime")),
}
RUNTIME_MODULE = {"savedmodel": "tensorflow", "litert": "ai_edge_litert", "onnx": "onnxruntime",
                  "keras": "keras"}


@dataclass
class ExportReport:
    """What `export_run` wrote and measured (also the content of export.json and README.md)."""

    out: Path
    config: ExportConfig
    run: str
    checkpoint: str
    model_config: object  # the run's ModelConfig
    val_bpc: float | None
    files: dict = field(default_factory=dict)  # name -> bytes
    runtime: str = ""  # "onnxruntime 1.32.0": what checked the export
    checked_chars: int = 0
    max_difference: float = 0.0  # max |logits - textgen's logits| over the checked characters
    quantization: dict | None = None  # float32_bytes, bytes, bpc_float32, bpc, eval_text


def require_runtime(export_format: str) -> str:
    """Import what the format needs; one line naming the `pip install` that fixes a missing one.
    Returns the runtime that runs the export, with its version ("onnxruntime 1.32.0")."""
    missing = []
    for module, package in RUNTIMES.get(export_format, ()):
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(package)
        except Exception as e:  # installed, but broken (e.g. built for another TensorFlow or NumPy)
            reason = (str(e).splitlines() or [""])[0]
            raise TextgenError(f"{package} is installed but fails to import ({type(e).__name__}: {reason}); "
                               f"reinstall it with: pip install --force-reinstall {package}") from None
    if missing:
        raise TextgenError(f"--format {export_format} needs {', '.join(missing)}, which is not installed; "
                           f"install it with: pip install {' '.join(missing)}")
    module = importlib.import_module(RUNTIME_MODULE[export_format])
    return f"{module.__name__} {getattr(module, '__version__', '')}".strip()


def check_out(out: Path) -> None:
    """Refuse an --out that would lose data, before anything is loaded."""
    if out.exists() and not out.is_dir():
        raise TextgenError(f"--out {out} is a file; give a directory to write the export into")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST_FILE).is_file():
        raise TextgenError(f"--out {out} is a directory with other files in it; give a new or empty "
                           "directory (an earlier textgen export there is replaced)")


def make_staging(out: Path) -> Path:
    """A new empty directory beside `out` to build the export in; one line if it cannot be made."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".export-tmp", dir=out.parent))
    except FileExistsError as e:
        raise TextgenError(f"cannot write --out {out}: {e.filename} is a file, not a directory") from None
    except OSError as e:
        raise TextgenError(f"cannot write --out {out}: {os_reason(e)}") from None


def export_run(run: str | None, runs_dir: str, which: str, config: ExportConfig, out: str | Path,
               warn: Callable[[str], None] | None = None) -> ExportReport:
    """Export a run's checkpoint to the directory `out`: the entry point of `textgen export`.

    Builds the export (`config.format`: savedmodel, litert, onnx or keras) in a staging
    directory, runs it with its own runtime on the same characters as textgen's model, and
    renames it into place only if the logits agree (see the module docstring).

    Args:
        run: a run name, a run directory, "latest", or None for the latest run.
        runs_dir: where runs are looked up by name.
        which: the checkpoint, "best" or "last".
        config: the export's settings (`textgen.config.ExportConfig`).
        out: the directory to write; it must not exist yet.
        warn: gets warnings (e.g. a missing "best" checkpoint replaced by "last"), or None.

    Returns:
        The `ExportReport` (files, sizes, the check's figures); `describe(report)` prints it.
        Bad input or a failed check raises `TextgenError` (one line); nothing is left at `out`.

    Example:

        report = export_run("my-run", "runs", "best", ExportConfig(format="onnx"), "my-run-onnx")
        print(describe(report))
    """
    from textgen.inference import load_run

    config.validate()
    out = Path(out)
    check_out(out)
    if config.eval_text and not Path(config.eval_text).is_file():
        raise TextgenError(f"--eval-text {config.eval_text} is not a file; give a text file to check the "
                           "export on")
    runtime = require_runtime(config.format)
    staging = make_staging(out)
    try:
        loaded = load_run(run, runs_dir, which, warn=warn)
        report = ExportReport(out, config, loaded.name, loaded.checkpoint.name, loaded.meta["model"],
                              loaded.meta.get("best_val_bpc"), runtime=runtime)
        from textgen.sample import banned_ids  # TensorFlow is loaded by now (load_run)

        write_model(loaded.model, staging, config, report, banned_ids(loaded.vocab))
        eval_ids = evaluation_ids(loaded.model, loaded.vocab, config)
        check_export(loaded.model, staging, eval_ids, report)
        vocab_json = json.dumps(loaded.vocab.chars, ensure_ascii=False)  # id i -> its character
        (staging / VOCAB_FILE).write_text(vocab_json, encoding="utf-8")
        (staging / README_FILE).write_text(readme_text(report), encoding="utf-8")
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest(report), indent=2), encoding="utf-8")
        report.files = {p.name: tree_size(p) for p in sorted(staging.iterdir())}
        publish(staging, out)
    except OSError as e:
        raise TextgenError(f"cannot write --out {out}: {os_reason(e)}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def write_model(model, staging: Path, config: ExportConfig, report: ExportReport,
                banned: tuple[int, ...] = ()) -> None:
    """Write the model file(s) of `config.format` into `staging`; a SavedModel's `generate` never
    writes the `banned` ids (`textgen.sample.banned_ids`)."""
    if config.format == "keras":
        model.save(staging / KERAS_FILE)
        return
    if config.format == "onnx":
        from textgen.export.onnx_format import convert_onnx

        convert_onnx(model, staging / ONNX_FILE, config.onnx_opset)
        return
    from textgen.export.step_module import convert_litert, save_savedmodel

    if config.format == "savedmodel":
        save_savedmodel(model, staging, banned=banned)
        return
    scratch = staging / ".savedmodel"
    save_savedmodel(model, scratch, with_generate=False)
    (staging / LITERT_FILE).write_bytes(convert_litert(scratch, config.quantize))
    if config.quantize != "none":
        report.quantization = {"float32_bytes": len(convert_litert(scratch, "none"))}
    shutil.rmtree(scratch)


def evaluation_ids(model, vocab, config: ExportConfig) -> np.ndarray:
    """The character ids an export is checked on: the start of `config.eval_text` (characters
    outside the vocabulary dropped), else text sampled from the model (temperature 1, seed 0)."""
    if config.eval_text:
        try:
            with open(config.eval_text, encoding="utf-8") as f:
                text = f.read(4 * config.eval_chars)
        except (OSError, UnicodeDecodeError) as e:
            reason = os_reason(e) if isinstance(e, OSError) else "it is not UTF-8 text"
            raise TextgenError(f"cannot read --eval-text {config.eval_text}: {reason}") from None
        missing = set(vocab.unknown_chars(text))
        ids = vocab.encode("".join(ch for ch in text if ch not in missing)[: config.eval_chars])
        if len(ids) < 2:
            raise TextgenError(f"--eval-text {config.eval_text} has fewer than 2 characters the model knows")
        return ids.astype(np.int32)
    from textgen.sample import Sampler

    length = config.eval_chars if config.quantize != "none" else config.check_chars
    # not XLA-compiled: compiling costs more than the few hundred steps it would speed up
    sampled = next(Sampler(model, chunk=length, jit_compile=False).generate(
        np.array([0], np.int32), SampleConfig(temperature=1.0, length=length, seed=0)))
    return sampled[0].astype(np.int32)


def check_export(model, staging: Path, eval_ids: np.ndarray, report: ExportReport) -> None:
    """Run the export with its runtime on `eval_ids`; refuse a float32 export that disagrees with
    textgen's model, measure a quantized one's bits per character."""
    config, shape = report.config, report.model_config
    step = open_runner(config.format, staging)
    ids = eval_ids if config.quantize != "none" else eval_ids[: config.check_chars]
    expected = reference_logits(model, ids)
    got = feed(step, ids, shape.num_layers, shape.units, config_cell(shape))
    report.checked_chars = len(ids)
    report.max_difference = float(np.abs(got - expected).max())
    if config.quantize != "none":
        report.quantization.update(bytes=(staging / LITERT_FILE).stat().st_size, bpc=bits_per_char(got, ids),
                                   bpc_float32=bits_per_char(expected, ids),
                                   eval_text=config.eval_text or "text sampled from the model")
    elif report.max_difference > config.tolerance:
        raise TextgenError(f"the {config.format} export's logits differ from textgen's by "
                           f"{report.max_difference:.2g} (more than {config.tolerance:g}); nothing was "
                           "written. Please report this with `textgen info` of the run")


def publish(staging: Path, out: Path) -> None:
    """Move the finished export to `out`, replacing an empty directory or an earlier export."""
    aside = None
    if out.is_dir():
        aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".replaced", dir=out.parent))
        os.replace(out, aside / out.name)
    os.replace(staging, out)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def tree_size(path: Path) -> int:
    """Bytes in a file, or in all files below a directory."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def describe(report: ExportReport) -> str:
    """What `textgen export` prints: the files written with their sizes, and the check."""
    lines = [f"exported {report.run} ({report.checkpoint}) as {report.config.format} to {report.out}"]
    lines += [f"  {name:<16} {human_size(size):>10}" for name, size in report.files.items()]
    lines.append(f"checked with {report.runtime}: logits within {report.max_difference:.2g} of textgen's "
                 f"over {report.checked_chars} characters")
    q = report.quantization
    if q:
        lines.append(f"int8 weights: {human_size(q['bytes'])}, {q['bytes'] / q['float32_bytes']:.0%} of "
                     f"float32's {human_size(q['float32_bytes'])}; bits per character on "
                     f"{report.checked_chars} characters of {q['eval_text']}: {q['bpc_float32']:.4f} -> "
                     f"{q['bpc']:.4f} ({(q['bpc'] / q['bpc_float32'] - 1):+.2%})")
    return "\n".join(lines)


def human_size(size: int) -> str:
    """1234567 -> '1.2 MB'."""
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")
