"""`textgen info`: what a run is, read from its run.json alone (no TensorFlow)."""

from __future__ import annotations

from pathlib import Path

from textgen.config import shortlist_for
from textgen.finetune import describe_lineage
from textgen.runs import read_run_meta, resolve_run


def describe_run(run: str | None, runs_dir: str | Path) -> str:
    """A short multi-line report: shape, parameters, progress, best validation bpc, corpus."""
    run_dir = resolve_run(run, runs_dir)
    meta = read_run_meta(run_dir)
    model, train, corpus = meta["model"], meta["train"], meta.get("corpus", {})
    shortlist = shortlist_for(model)
    best = meta.get("best_val_bpc")
    history = meta.get("history") or []
    sources = "built-in Python standard-library corpus" if corpus.get("default") else \
        ", ".join(corpus.get("paths", [])) or "unknown"
    lines = [
        f"run:              {run_dir}",
        f"model:            {model.num_layers} x {model.units} {model.cell.upper()}, embedding {model.embedding_dim}, "
        f"dropout {model.dropout}, recurrent dropout {model.recurrent_dropout}, vocabulary {model.vocab_size}, "
        + (f"two-level softmax ({shortlist:,} frequent characters, then the rest)" if shortlist else "one softmax"),
        f"parameters:       {model.parameter_count():,}",
        f"training:         batch {train.batch_size} x seq_len {train.seq_len}, "
        f"learning rate {train.learning_rate:g}, weight decay {train.weight_decay:g}, "
        f"head bias {train.head_bias}, seed {train.seed}, "
        f"strategy {train.strategy}, "
        f"precision {train.precision}" + (f" ({meta['precision_reason']})" if meta.get("precision_reason") else ""),
        f"steps:            {meta.get('step', 0):,}",
        f"best val bpc:     {'-' if best is None else f'{best:.4f}'}",
        f"last val bpc:     {history[-1]['val_bpc']:.4f}" if history else "last val bpc:     -",
        f"checkpoints:      best {meta['checkpoints'].get('best', '-')}, "
        f"last {meta['checkpoints'].get('last', '-')}",
        f"corpus:           {corpus.get('chars', 0):,} characters from {sources}",
    ]
    if "init_from" in meta:
        lines.append(f"fine-tuned from:  {describe_lineage(meta['init_from'])}")
    skipped = corpus.get("skipped")
    if skipped:
        more = ", ..." if skipped["count"] > len(skipped["names"]) else ""
        lines.append(f"skipped files:    {skipped['count']:,} binary, undecodable or unreadable "
                     f"(in the corpus directories): {', '.join(skipped['names'])}{more}")
    folded = corpus.get("folded")
    if folded:
        lines.append(f"rare characters:  {folded['rare_chars']:,} distinct characters seen fewer than "
                     f"{folded['min_count']} times ({folded['rare_occurrences']:,} occurrences) are one "
                     "unknown symbol (--min-count)")
    return "\n".join(lines)
