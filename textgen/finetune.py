"""Fine-tuning: start a new run from a trained one (`textgen train CORPUS --init-from RUN`).

The new run takes the base run's model (its whole `ModelConfig`: shape, head, cell) and
weights. Its vocabulary is the base's characters plus the new text's new ones, kept sorted, so
ids move; every base character keeps its embedding row, output column and bias bit for bit
under its new id (`move_weights`). New characters start as a new run's would (the fresh model's
random rows), except their output biases, which are calibrated on the new text against the base
model's logits (`calibrated_biases`). A two-level head keeps the base's frequency order and
shortlist; new characters join the tail. run.json records the lineage (`lineage_record`).

The corpus cache (`textgen.corpus_cache`) keeps holding the corpus's own ids, keyed by its
files: the merged vocabulary applies through the remap `merge_vocabulary` returns (as
`--min-count`'s folding does), both when the run starts and when it resumes, so the cache needs
no key for the base. The pure functions (vocabulary merge, id moves, weight moves, bias
calibration) need no TensorFlow; `start_from_base` applies them to a Trainer's freshly built model.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from textgen.config import FinetuneConfig, ModelConfig, apply_preset
from textgen.errors import TextgenError
from textgen.vocab import UNKNOWN, Vocabulary

# ModelConfig fields a fine-tuning run may change: regularisation. Every other field defines the
# model (shape, head, cell, vocabulary) and comes from the base run.
REGULARISATION = ("dropout", "embedding_dropout", "recurrent_dropout")


def preset_options(name: str | None, model_options: dict, train_options: dict) -> tuple[dict, dict]:
    """`config.apply_preset` for a fine-tuning run: the preset's regularisation and batching
    apply, its shape and learning rate do not (the shape is the base run's, and a fine-tuning
    run's learning rate defaults to `FinetuneConfig.learning_rate`). Explicit options win."""
    preset_model, preset_train = apply_preset(name, {}, {})  # the preset's own options (none: {})
    model = {k: v for k, v in preset_model.items() if k in REGULARISATION}
    train = {k: v for k, v in preset_train.items() if k != "learning_rate"}
    return {**model, **model_options}, {**train, **train_options}


def model_config(base: ModelConfig, model_options: dict, vocab_size: int, base_name: str) -> ModelConfig:
    """The fine-tuning run's ModelConfig: the base's whole config with the new `vocab_size` and
    the regularisation options given. Other options given that contradict the base are refused
    in one line (given and equal is fine)."""
    contradicting = [f"--{k.replace('_', '-')} {v} (it has {getattr(base, k)})"
                     for k, v in model_options.items()
                     if k not in REGULARISATION and getattr(base, k) != v]
    if contradicting:
        raise TextgenError(f"--init-from {base_name}: the model's shape comes from the base run, and "
                           f"{', '.join(contradicting)} contradict{'s' if len(contradicting) == 1 else ''} "
                           "it; drop those options")
    regularisation = {k: v for k, v in model_options.items() if k in REGULARISATION}
    return dataclasses.replace(base, vocab_size=vocab_size, **regularisation)


# ---------------------------------------------------------------------------- the vocabulary


def merge_vocabulary(base: Vocabulary, chars: list[str], counts: list[int],
                     min_count: int = 1) -> tuple[Vocabulary, np.ndarray, dict]:
    """The fine-tuning run's vocabulary: the base's characters plus the corpus's new ones, sorted.

    chars, counts: the corpus's distinct characters (sorted) and how often each occurs. A new
    character occurring fewer than `min_count` times folds into the unknown symbol U+FFFD (the
    base's, or a new one); a base character always keeps its row, however rare.

    Returns (vocabulary, remap (len(chars),) int32 from the corpus's ids to the vocabulary's,
    folded: {min_count, rare_chars, rare_occurrences} when min_count > 1, else {}).
    """
    known = set(base.chars)
    counts = np.asarray(counts, np.int64)
    new = [c for c, n in zip(chars, counts) if c not in known and n >= min_count]
    rare = np.array([c not in known and n < min_count for c, n in zip(chars, counts)], bool)
    unknown = UNKNOWN if base.unknown is not None or min_count > 1 else None
    merged = sorted(known | set(new) | ({unknown} if unknown else set()))
    vocab = Vocabulary(merged, unknown)
    remap = vocab.encode("".join(chars)).astype(np.int32)  # (corpus vocab,) -> merged ids
    folded = {"min_count": min_count, "rare_chars": int(rare.sum()),
              "rare_occurrences": int(counts[rare].sum())} if min_count > 1 else {}
    return vocab, remap, folded


def id_moves(base: Vocabulary, merged: Vocabulary) -> tuple[np.ndarray, np.ndarray]:
    """(old_to_new (base size,): each base id's id in `merged`, new_ids: the ids of the
    characters `merged` adds, ascending)."""
    old_to_new = merged.encode("".join(base.chars)).astype(np.int64)
    is_new = np.ones(merged.size, bool)
    is_new[old_to_new] = False
    return old_to_new, np.flatnonzero(is_new)


# ---------------------------------------------------------------------------- the weights


def move_weights(base: dict, fresh: dict, old_to_new: np.ndarray, new_ids: np.ndarray,
                 new_counts: np.ndarray) -> dict:
    """The vocabulary-dependent weights of the fine-tuning model, from the base model's.

    base, fresh: {"embedding" (vocab, dim), "kernel", "bias"[, "tail_kernel", "tail_bias",
    "frequency_order"]} of the base model and of the freshly initialised new one (numpy).
    Every base character's embedding row, output column and bias moves bit for bit to its new
    id; new characters keep the fresh model's rows. One softmax: kernel (units, vocab) and bias
    (vocab,) are indexed by id. Two-level head: head kernel and bias are indexed by frequency
    rank and stay as they are; the tail keeps the base's columns and appends the new characters
    (most frequent in the new text first, `new_counts` (len(new_ids),)), as does
    frequency_order. New characters' output biases are left at the fresh model's (zero):
    `calibrated_biases` sets them. Returns the same keys, new arrays.
    """
    out = {k: np.array(v, copy=True) for k, v in fresh.items()}
    out["embedding"][old_to_new] = base["embedding"]  # (vocab, dim)
    if "frequency_order" not in base:  # one softmax: columns by id
        out["kernel"][:, old_to_new] = base["kernel"]  # (units, vocab)
        out["bias"][old_to_new] = base["bias"]
        return out
    out["kernel"], out["bias"] = np.array(base["kernel"]), np.array(base["bias"])  # by rank
    tail = base["tail_kernel"].shape[1]  # base vocab - shortlist
    out["tail_kernel"][:, :tail] = base["tail_kernel"]  # (units, vocab - shortlist)
    out["tail_bias"][:tail] = base["tail_bias"]
    by_count = np.asarray(new_ids)[np.argsort(-np.asarray(new_counts), kind="stable")]
    out["frequency_order"] = np.concatenate([old_to_new[base["frequency_order"]], by_count]).astype(
        fresh["frequency_order"].dtype)
    return out


def calibrated_biases(logits: np.ndarray, new_ids: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Output biases (len(new_ids),) for the new characters, calibrated against the base model.

    logits (positions, vocab): the model's logits (or log-probabilities: only differences
    within a row matter) at positions of the new text, with the new characters' biases at 0;
    counts (vocab,): how often each character occurs in the new text.

    The criterion: at each position, the odds of a new character c against all base
    characters together, p(c) / p(base), averaged over the positions, equal the text's count
    ratio n_c / n_base. Those odds are exp(z_c + b_c - logsumexp(z_base)), linear in exp(b_c)
    and independent of the other new characters' biases, so

        b_c = log(n_c / n_base) - log mean_t exp(z_tc - logsumexp_j in base z_tj).

    (Asking that the mean predicted probability of c equal its frequency has no closed form: the
    normaliser grows with every new bias. The odds criterion gives the same answer when the new
    characters are rare, and a log-frequency alone is not on the trained biases' scale.) A count
    of 0 (a character only in the held-out text) counts as half an occurrence, as does a
    text without any base character.
    """
    logits = np.asarray(logits, np.float64)
    new_ids = np.asarray(new_ids, np.int64)
    counts = np.asarray(counts, np.float64)
    is_base = np.ones(logits.shape[-1], bool)
    is_base[new_ids] = False
    base_lse = np.logaddexp.reduce(logits[:, is_base], axis=-1)  # (positions,)
    relative = logits[:, new_ids] - base_lse[:, None]  # (positions, new)
    log_mean_odds = np.logaddexp.reduce(relative, axis=0) - np.log(len(logits))  # (new,)
    n_new = np.maximum(counts[new_ids], 0.5)
    n_base = max(counts[is_base].sum(), 0.5)
    return (np.log(n_new / n_base) - log_mean_odds).astype(np.float32)


# ---------------------------------------------------------------------------- lineage


def lineage_record(base_dir: Path, base_meta: dict, checkpoint: Path) -> dict:
    """run.json's `init_from`: the base run (path and name), the checkpoint taken and its step,
    and the base's corpus fingerprint."""
    from textgen.checkpoint import checkpoint_step

    record = {"run": str(Path(base_dir).resolve()), "name": Path(base_dir).name,
              "checkpoint": checkpoint.name.lstrip(".").split(".")[0],
              "step": checkpoint_step(checkpoint.name.lstrip(".").split(".")[0]) or 0}
    fingerprint = base_meta.get("corpus", {}).get("fingerprint")
    if fingerprint:
        record["corpus_fingerprint"] = fingerprint
    return record


def describe_lineage(record: dict) -> str:
    """One line for `textgen info`: where a fine-tuned run started."""
    fingerprint = record.get("corpus_fingerprint")
    corpus = f", its corpus {fingerprint[:12]}" if fingerprint else ""
    return (f"{record['name']} ({record['run']}), checkpoint {record['checkpoint']} at step "
            f"{record['step']:,}{corpus}")


# ---------------------------------------------------------------------------- applying it


def describe_start(base, vocab: Vocabulary) -> list[str]:
    """What a fine-tuning run tells as it starts: its base and the characters it adds (one line),
    and (one more) that the base folded rare characters into the unknown symbol, if it did."""
    added = sorted(set(vocab.chars) - set(base.vocab.chars))
    shown = " ".join(repr(c) for c in added[:10]) + (" ..." if len(added) > 10 else "")
    lines = [f"fine-tuning from run {base.run_dir.name} ({base.checkpoint.name}): vocabulary "
             f"{base.vocab.size} -> {vocab.size}" + (f", {len(added)} new: {shown}" if added else ", no new characters")]
    if base.vocab.unknown is not None:
        folded = base.meta["corpus"].get("folded") or {}
        rare = folded.get("rare_chars")
        what = f"{rare} rare character{'s' if rare != 1 else ''}" if rare is not None else "the rare characters"
        lines.append(f"run {base.run_dir.name} folded {what} of its corpus into U+{ord(base.vocab.unknown):04X} "
                     f"(--min-count {folded.get('min_count', '?')}); the new text's characters outside its "
                     "vocabulary get rows of their own (unless rarer than --min-count here)")
    return lines


@dataclasses.dataclass
class Base:
    """A base run opened for fine-tuning: its directory, run.json, vocabulary and checkpoint."""

    run_dir: Path
    meta: dict
    vocab: Vocabulary
    checkpoint: Path


def open_base(run: str, runs_root, which: str | None) -> Base:
    """The base run `run` (a name under `runs_root` or a path), checked: a missing or damaged
    run, vocabulary or checkpoint is a one-line error."""
    from textgen import checkpoint as ckpt
    from textgen import runs

    which = which or FinetuneConfig.checkpoint
    try:
        run_dir = runs.resolve_run(run, runs_root)
        meta = runs.read_run_meta(run_dir)
        vocab = runs.load_vocab(run_dir, meta)
        checkpoint = ckpt.checkpoint_dir(run_dir, meta, which)
        if not ckpt.is_complete(checkpoint):
            raise TextgenError(f"checkpoint {checkpoint} is incomplete; retrain or restore the run")
    except TextgenError as e:
        raise TextgenError(f"--init-from {run}: {e}") from None
    return Base(run_dir, meta, vocab, checkpoint)


def _vocab_weights(model) -> dict:
    """The model's vocabulary-dependent variables by `move_weights`'s names."""
    weights = {"embedding": model.embedding.embeddings, "kernel": model.head.kernel, "bias": model.head.bias}
    if model.shortlist:
        weights.update(tail_kernel=model.tail.kernel, tail_bias=model.tail.bias,
                       frequency_order=model.frequency_order)
    return weights


def start_from_base(trainer, base: Base, calibration_chars: int = FinetuneConfig.calibration_chars) -> None:
    """Put the base run's weights into the trainer's freshly built model (before its first
    step): every vocabulary-independent weight as it is, the vocabulary-dependent ones moved
    (`move_weights`), then the new characters' output biases calibrated on the trainer's
    training text (`calibrated_biases`)."""
    from textgen import checkpoint as ckpt
    from textgen.model import build_model

    source = build_model(base.meta["model"])
    try:
        ckpt.load_weights(source, base.checkpoint)
    except TextgenError as e:
        raise TextgenError(f"--init-from {base.run_dir.name}: {e}") from None
    model = trainer.model
    moved_vars, base_vars = _vocab_weights(model), _vocab_weights(source)
    vocab_ids = {id(v) for v in moved_vars.values()}
    for target, weight in zip(model.weights, source.weights):  # same architecture, same order
        if id(target) not in vocab_ids:
            target.assign(weight.numpy())
    old_to_new, new_ids = id_moves(base.vocab, trainer.vocab)
    counts = trainer.train_data.char_counts(trainer.vocab.size)  # (vocab,)
    moved = move_weights({k: v.numpy() for k, v in base_vars.items()},
                         {k: v.numpy() for k, v in moved_vars.items()}, old_to_new, new_ids, counts[new_ids])
    if len(new_ids):  # the new columns' biases at 0 while the base model scores the text
        bias_key, columns = _new_bias_columns(model, moved, new_ids)
        moved[bias_key][columns] = 0.0
    for name, variable in moved_vars.items():
        variable.assign(moved[name])
    if len(new_ids):
        biases = calibrated_biases(_sample_logits(trainer, calibration_chars), new_ids, counts)
        moved[bias_key][columns] = biases
        moved_vars[bias_key].assign(moved[bias_key])


def _new_bias_columns(model, moved: dict, new_ids: np.ndarray) -> tuple[str, np.ndarray]:
    """Which bias vector holds the new characters' biases, and where (in `new_ids` order)."""
    if not model.shortlist:
        return "bias", np.asarray(new_ids)
    ranks = np.argsort(moved["frequency_order"])  # id -> rank
    return "tail_bias", ranks[new_ids] - model.shortlist


def _sample_logits(trainer, chars: int) -> np.ndarray:
    """The model's logits (positions, vocab) over the first training windows, about `chars`
    positions (at least one window), each window from a zero state."""
    import tensorflow as tf

    data, out, seen = trainer.train_data, [], 0
    for k in range(data.num_windows):
        x, _ = data.window(k)  # (batch, time)
        logits, _ = trainer.model(tf.constant(x, tf.int32))  # (batch, time, vocab)
        out.append(logits.numpy().reshape(-1, logits.shape[-1]))
        seen += x.size
        if seen >= chars:
            break
    return np.concatenate(out)[:max(chars, 1)]
