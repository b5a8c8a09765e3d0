"""Fine-tuning against training from scratch on a small text, side by side, at equal minutes.

Two pairs, each a large base corpus and a small target in the same language:
tinyshakespeare -> milton (English verse) and songci -> wudai (Chinese ci). A base run is trained
once on the whole base corpus (`textgen train BASE --preset small --minutes B`, reused when its
folder exists). For each target budget M, two runs start at the same moment and train side by
side, so they share the machine's load alike:

    textgen train TARGET --preset small --minutes M                       # from scratch
    textgen train TARGET --preset small --minutes M --init-from BASE      # fine-tuned

Both train on the first 90% of the target (`--val-fraction 0.1`, the trainer keeps its best
checkpoint by that tail) and are scored by `textgen eval` on the held-out last 10%, one stream
with the state carried through. Both vocabularies include every character of the target file,
so characters that occur only in the held-out part count alike.

    python bench/finetune.py --base-minutes 15 --minutes 1 2 5
    python bench/finetune.py --minutes 2 --lr 3e-4 1e-3 3e-3   # fine-tuned only, one per rate
    python bench/finetune.py --pairs songci:wudai --minutes 2 --shortlist-only

The two-level output layer of a large-vocabulary base keeps the base's frequency order when it
is fine-tuned (new characters join the tail); `--shortlist-only` prints how much of the target
text falls outside the base's shortlist against a shortlist recomputed on the target itself:
the softmax is exact either way, so the order costs only tail computations, never bits.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from quality import cpu_model

HERE = Path(__file__).resolve().parent
CORPORA = HERE.parents[1] / "shared" / "corpora"
PAIRS = {"tinyshakespeare": "milton", "songci": "wudai"}
HELD_OUT = 0.1


def train_command(corpus: Path, minutes: float, runs: Path, name: str, extra: list[str]) -> list[str]:
    """The `textgen train` command line of one contender."""
    return ["textgen", "train", str(corpus), "--preset", "small", "--minutes", f"{minutes:g}",
            "--val-fraction", str(HELD_OUT), "--runs-dir", str(runs), "--name", name, "--quiet", *extra]


def ensure_base(corpora: Path, base: str, minutes: float, runs: Path) -> Path:
    """The base run of `base` under `runs`, trained now unless its folder is already there."""
    run = runs / f"base-{base}"
    if not (run / "run.json").is_file():
        command = train_command(corpora / f"{base}.txt", minutes, runs, run.name, [])
        print("+", " ".join(command), flush=True)
        subprocess.run(command, check=True)
    history = json.loads((run / "run.json").read_text(encoding="utf-8")).get("history") or [{}]
    print(f"base {run.name}: step {history[-1].get('step')}, best validation bpc "
          f"{min(h.get('val_bpc', float('inf')) for h in history):.4f}", flush=True)
    return run


def side_by_side(commands: list[list[str]]) -> float:
    """Run the commands side by side, each pinned to a core of its own (`taskset`), as many at
    once as there are cores: each contender is a one-core machine, and no process's threads
    crowd another's. Returns the wall-clock minutes until the last one ends."""
    cores = sorted(os.sched_getaffinity(0))
    start = time.monotonic()
    for first in range(0, len(commands), len(cores)):
        batch = commands[first:first + len(cores)]
        for command in batch:
            print("+", " ".join(command), flush=True)
        processes = [subprocess.Popen(["taskset", "-c", str(core), *command])
                     for core, command in zip(cores, batch)]
        if any(process.wait() != 0 for process in processes):
            raise SystemExit("a training run failed (see its output above)")
    return (time.monotonic() - start) / 60


def score(runs: Path, name: str, held_out: Path) -> dict:
    """Held-out bpc of a run's best checkpoint, its steps and its validation curve."""
    out = subprocess.run(["textgen", "eval", name, str(held_out), "--runs-dir", str(runs), "--quiet"],
                         check=True, capture_output=True, text=True).stdout
    meta = json.loads((runs / name / "run.json").read_text(encoding="utf-8"))
    history = meta.get("history") or []
    return {"bpc": float(re.search(r"^total +([0-9.]+)", out, re.MULTILINE).group(1)),
            "steps": history[-1]["step"] if history else 0,
            "curve": [(h["step"], h["val_bpc"]) for h in history]}


def held_out_file(corpora: Path, target: str, workdir: Path) -> Path:
    """The last 10% of the target text, written once under `workdir`."""
    text = (corpora / f"{target}.txt").read_text(encoding="utf-8")
    path = workdir / f"{target}-held-out.txt"
    path.write_text(text[len(text) - int(len(text) * HELD_OUT):], encoding="utf-8")
    return path


def compare(corpora: Path, base_run: Path, target: str, minutes: float, runs: Path, held_out: Path,
            tag: str) -> tuple[dict, dict]:
    """Scratch and fine-tuned runs of `minutes` on `target`, side by side; their scores."""
    corpus = corpora / f"{target}.txt"
    scratch, tuned = f"{target}-scratch-{tag}", f"{target}-tuned-{tag}"
    for name in (scratch, tuned):
        if (runs / name).exists():
            raise SystemExit(f"{runs / name} exists: pass a fresh --workdir")
    side_by_side([train_command(corpus, minutes, runs, scratch, []),
                  train_command(corpus, minutes, runs, tuned, ["--init-from", str(base_run)])])
    return score(runs, scratch, held_out), score(runs, tuned, held_out)


def shortlist_share(corpora: Path, base_run: Path, target: str) -> str:
    """Share of the target's characters inside the base's shortlist and inside one recomputed on
    the target (the same size), for a base with the two-level output layer."""
    meta = json.loads((base_run / "run.json").read_text(encoding="utf-8"))
    size = meta["model"].get("head_shortlist", 0)
    if not size:
        return f"{base_run.name}: one softmax over the vocabulary (no shortlist)"
    base_text = (corpora / f"{base_run.name.removeprefix('base-')}.txt").read_text(encoding="utf-8")
    text = (corpora / f"{target}.txt").read_text(encoding="utf-8")
    counts = Counter(text)
    kept = {c for c, _ in Counter(base_text).most_common(size)}
    recomputed = {c for c, _ in counts.most_common(size)}
    inside = lambda chars: sum(n for c, n in counts.items() if c in chars) / len(text)  # noqa: E731
    return (f"{target} against {base_run.name}'s shortlist of {size}: {inside(kept):.2%} of the "
            f"characters inside the base's order (counted over the base corpus), {inside(recomputed):.2%} inside one recomputed "
            f"on {target}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", nargs="+", default=[f"{b}:{t}" for b, t in PAIRS.items()],
                        help="BASE:TARGET corpus names under ../shared/corpora")
    parser.add_argument("--base-minutes", type=float, default=15.0, help="training budget of a base")
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 2.0, 5.0],
                        help="target budgets, each a scratch/fine-tuned pair side by side")
    parser.add_argument("--lr", type=float, nargs="*", default=[],
                        help="instead: fine-tuned runs only, one per learning rate, side by side")
    parser.add_argument("--corpora", type=Path, default=CORPORA, help="where the corpora are")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/textgen-finetune"))
    parser.add_argument("--shortlist-only", action="store_true",
                        help="only the two-level head's shortlist shares, no training")
    args = parser.parse_args(argv)
    runs = args.workdir / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    print(f"{cpu_model()}; new bases {args.base_minutes:g} min, targets {args.minutes} min, "
          f"each on one core; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", flush=True)
    rows = []
    for pair in args.pairs:
        base, target = pair.split(":")
        base_run = ensure_base(args.corpora, base, args.base_minutes, runs)
        print(shortlist_share(args.corpora, base_run, target), flush=True)
        if args.shortlist_only:
            continue
        held_out = held_out_file(args.corpora, target, args.workdir)
        for minutes in args.minutes:
            if args.lr:  # fine-tuned runs only, one per learning rate, all side by side
                names = [f"{target}-tuned-{minutes:g}m-lr{lr:g}".replace(".", "_") for lr in args.lr]
                side_by_side([train_command(args.corpora / f"{target}.txt", minutes, runs, name,
                                            ["--init-from", str(base_run), "--learning-rate", f"{lr:g}"])
                              for name, lr in zip(names, args.lr)])
                for name, lr in zip(names, args.lr):
                    tuned = score(runs, name, held_out)
                    print(f"{pair} {minutes:g} min fine-tuned with lr {lr:g}: {tuned['bpc']:.4f} "
                          f"({tuned['steps']} steps)", flush=True)
                continue
            scratch, tuned = compare(args.corpora, base_run, target, minutes, runs, held_out,
                                     f"{minutes:g}m".replace(".", "_"))  # run names: no dots
            rows.append((pair, minutes, scratch, tuned))
            print(f"{pair} {minutes:g} min: scratch {scratch['bpc']:.4f} ({scratch['steps']} steps), "
                  f"fine-tuned {tuned['bpc']:.4f} ({tuned['steps']} steps), difference "
                  f"{tuned['bpc'] - scratch['bpc']:+.4f}", flush=True)
    if not rows:
        return 0
    print("\n| pair | minutes | scratch bpc | fine-tuned bpc | fine-tuned - scratch |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for pair, minutes, scratch, tuned in rows:
        print(f"| {pair} | {minutes:g} | {scratch['bpc']:.3f} ({scratch['steps']:,} steps) "
              f"| {tuned['bpc']:.3f} ({tuned['steps']:,} steps) | {tuned['bpc'] - scratch['bpc']:+.3f} |")
    for pair, minutes, scratch, tuned in rows:
        if minutes == max(args.minutes):
            print(f"\nvalidation curves, {pair}, {minutes:g} min (step: bpc)")
            print("scratch:    " + " ".join(f"{s}:{b:.3f}" for s, b in scratch["curve"]))
            print("fine-tuned: " + " ".join(f"{s}:{b:.3f}" for s, b in tuned["curve"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
