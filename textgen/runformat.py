"""The run format: what a run directory's files are called, what run.json may hold, which
format version this textgen writes, and how runs saved by older versions are read.

    run.json          FORMAT, VERSION, the model and train configs, corpus summary, history,
                      and pointers {"checkpoints": {"last": ..., "best": ...}}
    vocab.json        the vocabulary (textgen.vocab)
    ckpt-<step>/      model.weights.h5, resume.npz (arrays named by `optimizer_key` and
                      `carry_key`), state.json (step and the `textgen.progress.Progress` record)

Reading run.json checks its `version` first: a run without one is of the oldest format; one of
this version or older is migrated through `ADDED` (the one table of fields newer than some
saved runs: `parse_run_meta` and `CharLSTM.from_config` both read it); a newer one is refused
with "upgrade textgen", not called damaged. Then every field is checked against the schema
(`meta_problem`): a wrong or unknown field is damage, a one-line error, never a traceback
further on. Adding a field to run.json is one entry in `ADDED` (with the first version that
writes it: VERSION follows) and, outside `model`/`train`, one in the schema tables below.
No TensorFlow here.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from textgen.config import CELL_NAMES, ModelConfig, TrainConfig, from_dict, to_dict
from textgen.errors import TextgenError

FORMAT = "textgen-run"
RUN_FILE = "run.json"
VOCAB_FILE = "vocab.json"
WEIGHTS_FILE = "model.weights.h5"
RESUME_FILE = "resume.npz"
STATE_FILE = "state.json"
CHECKPOINT_RE = re.compile(r"ckpt-(\d{8})")
OLDEST_VERSION = 1  # what a run.json without a `version` is (none was ever written without one)
ABSENT = object()  # ADDED's `before` for a field older runs simply lack (nothing to fill in)


@dataclass(frozen=True)
class Added:
    """A run.json field newer than some saved runs.

    Args:
        before: the value in effect in a run saved before the field existed, filled in where
            such a run lacks it; ABSENT leaves it out.
        version: the first format version that may carry the field. A field an older textgen
            cannot read gets a new version here, and VERSION (the highest) goes up with it, so
            that older textgens ask for an upgrade instead of calling the run damaged.
    """

    before: Any
    version: int = 1


# "section.field" -> Added. Fields added during format 1 (which never required them) are
# filled in for any run that lacks them, whatever today's default would choose.
ADDED: dict[str, Added] = {
    "model.head_shortlist": Added(0),  # one softmax over the vocabulary
    "model.cell": Added("lstm"),  # before --cell, every run was the LSTM
    "train.head_bias": Added("zeros"),  # the output bias started at zeros
    "train.precision": Added("float32"),  # before --precision, everything trained in float32
    "train.warmup_steps": Added(0),  # the first runs had a constant learning rate ...
    "train.lr_decay": Added("none"),  # ... without warm-up or decay
    "corpus.skipped": Added(ABSENT),  # undecodable files skipped: {"count", "names" (the first few)}
    "init_from": Added(ABSENT, version=2),  # a fine-tuned run's lineage (LINEAGE_FIELDS)
}
VERSION = max([OLDEST_VERSION] + [a.version for a in ADDED.values()])  # what this textgen writes


def fields_before(section: str) -> dict[str, Any]:
    """{field: value in effect before it existed} for the `ADDED` fields of `section`
    ("model", "train", ...) that have such a value: what an old run or Keras config lacks."""
    return {dotted.split(".", 1)[1]: added.before for dotted, added in ADDED.items()
            if dotted.split(".")[0] == section and added.before is not ABSENT}


# ---------------------------------------------------------------------------- resume.npz keys


def optimizer_key(i: int) -> str:
    """resume.npz's name of the optimizer's `i`-th variable (in `optimizer.variables` order)."""
    return f"opt_{i}"


def carry_key(i: int) -> str:
    """resume.npz's name of the `i`-th array of the carried state, flattened layer by layer and
    within a layer in the cell's state order (LSTM: h, c): (batch, units) float32 each."""
    return f"carry_{i}"


# ---------------------------------------------------------------------------- reading


def read_json(path: Path, what: str) -> Any:
    """A JSON file of a run; missing or unparsable is a one-line TextgenError naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TextgenError(f"{path} is missing: the run is incomplete; retrain or restore it") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise TextgenError(f"{path} is corrupt ({what}: {' '.join(str(e).split())}); "
                           "retrain or restore the run") from None


def parse_run_meta(raw: Any, path: Path) -> dict:
    """run.json's freshly parsed JSON `raw` (read from `path`), version-checked, migrated to the
    current format (in place: no copy, which could exceed the recursion limit on a deep
    document that JSON parsed) and validated field by field; `model`/`train` become config
    dataclasses.

    Every field another module reads is checked here, so code further on can trust it."""
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise TextgenError(f"{path} is not a textgen run file; retrain or restore the run")
    version = raw.get("version", OLDEST_VERSION)
    if _is_count(version) and version > VERSION:
        raise TextgenError(f"{path}: this run was written by a newer textgen (format {version}); "
                           f"upgrade textgen (this one reads formats up to {VERSION})")
    meta = raw
    try:
        problem = None if _is_count(version) and version >= 1 else "version is not a format number"
        problem = problem or _migrate(meta, version)
        if not problem:
            meta["model"] = from_dict(ModelConfig, meta.get("model"))
            meta["train"] = from_dict(TrainConfig, meta.get("train"))
            problem = meta_problem(meta)
    except TextgenError as e:
        problem = str(e)
    if problem:
        raise TextgenError(f"{path} is damaged ({problem}); retrain or restore the run")
    return meta


def _migrate(meta: dict, version: int) -> str | None:
    """Fill in, in place, what a run of format `version` lacks (`ADDED`); a field newer than
    the run's own format is a problem, returned."""
    for dotted, added in ADDED.items():
        *parents, name = dotted.split(".")
        node = meta
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue  # the section itself is missing or wrong: the schema says so
        if name in node and added.version > version:
            return f"{dotted} is newer than the run's format {version}"
        if name not in node and added.before is not ABSENT:
            node[name] = added.before
    return None


def meta_to_json(meta: dict) -> dict:
    """The JSON-ready form of a run meta dict (config dataclasses turned into dicts), stamped
    with this textgen's format and version: what it writes is complete in the current format."""
    out = {**meta, "format": FORMAT, "version": VERSION}
    out["model"] = to_dict(meta["model"])
    out["train"] = to_dict(meta["train"])
    return out


# ---------------------------------------------------------------------------- the schema


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _is_real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_text_list(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _is_checkpoints(v) -> bool:
    return isinstance(v, dict) and all(k in ("last", "best") and isinstance(n, str)
                                       and CHECKPOINT_RE.fullmatch(n) for k, n in v.items())


Check = tuple[Callable[[Any], bool], str]  # (test, what the value must be)
ANYTHING: Check = (lambda v: True, "")

# field -> (check, what it must be); fields absent from a run.json are allowed unless required
TOP_FIELDS: dict[str, Check] = {
    "format": ANYTHING, "version": ANYTHING,  # checked before anything else
    "model": ANYTHING, "train": ANYTHING,  # config dataclasses by now (`config.from_dict`)
    "name": (lambda v: isinstance(v, str), "a string"),
    "step": (_is_count, "a non-negative integer"),
    "best_val_bpc": (lambda v: v is None or _is_real(v), "a number"),
    "vocab_sha256": (lambda v: isinstance(v, str), "a string"),
    "precision_reason": (lambda v: isinstance(v, str), "a string"),
    "checkpoints": (_is_checkpoints, "a map of 'last'/'best' to names ckpt-<8 digits>"),
    "corpus": (lambda v: isinstance(v, dict), "an object"),
    "history": (lambda v: isinstance(v, list), "a list"),
    "init_from": (lambda v: isinstance(v, dict), "an object"),
}
# a fine-tuned run's base (`textgen.finetune.lineage_record`): the run, the checkpoint it started
# from and that checkpoint's step, and the base's corpus fingerprint
LINEAGE_FIELDS: dict[str, Check] = {
    "run": (lambda v: isinstance(v, str), "a path"),
    "name": (lambda v: isinstance(v, str), "a run name"),
    "checkpoint": (lambda v: isinstance(v, str) and bool(CHECKPOINT_RE.fullmatch(v)), "a name ckpt-<8 digits>"),
    "step": (_is_count, "a step number"),
    "corpus_fingerprint": (lambda v: isinstance(v, str), "a string"),
}
LINEAGE_REQUIRED = ("run", "name", "checkpoint", "step")
CORPUS_FIELDS: dict[str, Check] = {
    "default": (lambda v: isinstance(v, bool), "true or false"),
    "paths": (_is_text_list, "a list of paths"),
    "encoding": (lambda v: isinstance(v, str), "a string"),
    "chars": (_is_count, "a character count"),
    "train_chars": (_is_count, "a character count"),
    "vocab_size": (_is_count, "a count"),
    "fingerprint": (lambda v: isinstance(v, str), "a string"),
    "folded": (lambda v: isinstance(v, dict) and all(_is_count(v.get(k)) for k in
                                                     ("min_count", "rare_chars", "rare_occurrences")),
               "a summary of the characters folded into the unknown symbol"),
    "skipped": (lambda v: isinstance(v, dict) and set(v) == {"count", "names"} and _is_count(v["count"])
                and _is_text_list(v["names"]), "a summary {count, names} of the files skipped"),
}
HISTORY_FIELDS: dict[str, Check] = {
    "step": (_is_count, "a step number"),
    "epoch": (_is_count, "an epoch number"),
    "train_loss": (lambda v: v is None or _is_real(v), "a number or null"),
    "train_bpc": (lambda v: v is None or _is_real(v), "a number or null"),
    "val_bpc": (_is_real, "a number"),
}
HISTORY_REQUIRED = ("step", "val_bpc")


def _fields_problem(record: dict, table: dict[str, Check], where: str = "",
                    required: tuple[str, ...] = ()) -> str | None:
    """What is wrong with one object of run.json (`where`: its place, "" for the top) against
    its table, or None."""
    unknown = sorted(set(record) - set(table), key=str)
    if unknown:
        return f"{where or 'run.json'} has unknown field(s) {', '.join(map(repr, unknown))}"
    for key, (check, what) in table.items():
        if key in required and key not in record:
            return f"{where} has no {key}"
        if key in record and not check(record[key]):
            return f"{where + '.' if where else ''}{key} is not {what}"
    return None


def meta_problem(meta: dict) -> str | None:
    """What is wrong with a migrated run.json whose configs are already parsed, or None."""
    problem = _fields_problem(meta, TOP_FIELDS)
    if problem:
        return problem
    if not _is_count(meta["model"].head_shortlist):
        return "model.head_shortlist is not a non-negative integer"
    if meta["model"].cell not in CELL_NAMES:
        return f"model.cell is not one of {', '.join(CELL_NAMES)}"
    if meta["train"].precision == "auto":
        return "train.precision is 'auto', which a run resolves when it starts"
    meta.setdefault("checkpoints", {})
    problem = _fields_problem(meta.setdefault("corpus", {}), CORPUS_FIELDS, "corpus")
    if not problem and "init_from" in meta:
        problem = _fields_problem(meta["init_from"], LINEAGE_FIELDS, "init_from", LINEAGE_REQUIRED)
    for i, record in enumerate(meta.setdefault("history", [])):
        if problem:
            break
        problem = (f"history[{i}] is not an object" if not isinstance(record, dict) else
                   _fields_problem(record, HISTORY_FIELDS, f"history[{i}]", HISTORY_REQUIRED))
    return problem
