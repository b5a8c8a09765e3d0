"""The cell ablation: every `textgen train --cell` on character-level text, at equal minutes.

For each corpus (first 90% trains, last 10% held out) and seed, every cell trains for the same
wall-clock budget with the `small` preset otherwise, two runs at a time side by side, each pinned
to a core of its own (bench/finetune.py's `side_by_side`):

    textgen train CORPUS --preset small --minutes M --val-fraction 0.1 --eval-every 50 --cell C --seed S

Each run is scored by `textgen eval` (its best checkpoint, one stream with the state carried)
on the held-out 10%: held-out bits per character at equal wall-clock. The equal-steps comparison
reads the same runs' validation curves (the trainer's own validations of the held-out tail) at
the step count the slowest cell reached, interpolated linearly between validations; the schedule
of each run decays over its own budget, so a faster cell is read there before its end.

Cells: lstm (the seed's equations; Greff et al. 2015's no-peephole variant), peephole (Greff's
"vanilla" baseline), cifg, gru, and Greff's two harmful ablations nfg (f_t = 1) and noaf
(h_t = o_t * C_t). Reported per cell: mean over seeds and the spread (half the range). A third
seed runs for a cell and lstm where their means differ by less than the larger spread
(`--no-third-seed` to skip).

    python bench/cells.py                                    # 6 cells x 2 corpora x 2 seeds x 5 min
    python bench/cells.py --cells lstm gru --corpora tinyshakespeare --seeds 1 --minutes 1
    python bench/cells.py --report-only                      # the table from the runs already there
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from finetune import CORPORA, HELD_OUT, held_out_file, score, side_by_side, train_command
from quality import cpu_model

CELLS = ("lstm", "peephole", "cifg", "gru", "nfg", "noaf")
EVAL_EVERY = 50


def run_name(corpus: str, cell: str, seed: int) -> str:
    return f"{corpus}-{cell}-s{seed}"


def missing_runs(runs: Path, corpus: str, cells, seeds) -> list[tuple[str, int]]:
    """(cell, seed) pairs whose run has not finished under `runs` (no run.json yet)."""
    return [(cell, seed) for seed in seeds for cell in cells
            if not (runs / run_name(corpus, cell, seed) / "run.json").is_file()]


def train_all(corpora: Path, corpus: str, todo: list[tuple[str, int]], minutes: float, runs: Path) -> None:
    """Train the (cell, seed) runs of `corpus`, two side by side at a time."""
    commands = []
    for cell, seed in todo:
        name = run_name(corpus, cell, seed)
        if (runs / name).exists():  # a run cut off before its run.json: start it again
            raise SystemExit(f"{runs / name} exists without run.json: remove it or pass a fresh --workdir")
        commands.append(train_command(corpora / f"{corpus}.txt", minutes, runs, name,
                                      ["--cell", cell, "--seed", str(seed), "--eval-every", str(EVAL_EVERY)]))
    side_by_side(commands)


def at_step(curve: list[tuple[int, float]], step: float) -> float:
    """The validation curve (step, bpc) read at `step`, linear between validations."""
    for (s0, b0), (s1, b1) in zip(curve, curve[1:]):
        if s0 <= step <= s1:
            return b0 + (b1 - b0) * (step - s0) / (s1 - s0) if s1 > s0 else b1
    return curve[-1][1]


def mean_spread(values: list[float]) -> tuple[float, float]:
    """Mean and half the range."""
    return sum(values) / len(values), (max(values) - min(values)) / 2


def needs_third_seed(scores: dict, cell: str) -> bool:
    """Whether `cell` and lstm differ by less than the larger of their spreads (2 seeds each)."""
    if cell == "lstm" or "lstm" not in scores or len(scores[cell]) != 2 or len(scores["lstm"]) != 2:
        return False
    (mean, spread), (base, base_spread) = mean_spread(scores[cell]), mean_spread(scores["lstm"])
    return abs(mean - base) < max(spread, base_spread)


SCORES: dict[str, dict] = {}  # run name -> its score, each run evaluated once per invocation


def collect(runs: Path, corpus: str, cells, held_out: Path) -> dict:
    """{cell: [score per seed run found]} with `finetune.score`'s fields and the seed."""
    names = {cell: [path.parent.name for path in sorted(runs.glob(f"{corpus}-{cell}-s*/run.json"))]
             for cell in cells}
    new = [name for found in names.values() for name in found if name not in SCORES]
    with ThreadPoolExecutor(max_workers=len(os.sched_getaffinity(0))) as pool:  # one eval per core
        for name, result in zip(new, pool.map(lambda name: score(runs, name, held_out), new)):
            SCORES[name] = {**result, "seed": int(name.rsplit("-s", 1)[1])}
    return {cell: [SCORES[name] for name in found] for cell, found in names.items() if found}


def report(corpus: str, found: dict) -> None:
    """The markdown table of one corpus: equal minutes, equal steps, differences to lstm and peephole."""
    slowest = min(r["steps"] for results in found.values() for r in results)
    held = {cell: [r["bpc"] for r in results] for cell, results in found.items()}
    equal = {cell: [at_step(r["curve"], slowest) for r in results] for cell, results in found.items()}
    print(f"\n{corpus}: held-out bpc, mean ± half the range over seeds; equal steps = {slowest} "
          f"(the slowest run's last step), read off the validation curves")
    print("| cell | seeds | steps | bpc at equal minutes | vs lstm | vs peephole | bpc at equal steps | vs lstm |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    mean = lambda values: mean_spread(values)[0]  # noqa: E731
    for cell, results in found.items():
        (m, s), (em, es) = mean_spread(held[cell]), mean_spread(equal[cell])
        steps = round(mean([r["steps"] for r in results]))
        vs = lambda table, other: f"{mean(table[cell]) - mean(table[other]):+.3f}" if other in table else "-"  # noqa: E731
        print(f"| {cell} | {len(results)} | {steps:,} | {m:.3f} ± {s:.3f} | {vs(held, 'lstm')} | "
              f"{vs(held, 'peephole')} | {em:.3f} ± {es:.3f} | {vs(equal, 'lstm')} |")
    for cell, results in found.items():
        print(f"{cell} per seed: " + ", ".join(f"s{r['seed']} {r['bpc']:.4f} ({r['steps']} steps)" for r in results))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=CELLS)
    parser.add_argument("--corpora", nargs="+", default=["tinyshakespeare", "songci"],
                        help="corpus names under --corpus-dir")
    parser.add_argument("--corpus-dir", type=Path, default=CORPORA)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--minutes", type=float, default=5.0, help="training budget of each run")
    parser.add_argument("--no-third-seed", action="store_true")
    parser.add_argument("--report-only", action="store_true", help="train nothing; report the runs there")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/textgen-cells"))
    args = parser.parse_args(argv)
    runs = args.workdir / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    print(f"{cpu_model()}; cells {' '.join(args.cells)}; {args.minutes:g} min each on one core, "
          f"two side by side; validation tail {HELD_OUT:g}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
          flush=True)
    for corpus in args.corpora:
        held_out = held_out_file(args.corpus_dir, corpus, args.workdir)
        if not args.report_only:
            train_all(args.corpus_dir, corpus, missing_runs(runs, corpus, args.cells, args.seeds), args.minutes, runs)
        found = collect(runs, corpus, args.cells, held_out)
        if not args.report_only and not args.no_third_seed:
            bpc = {cell: [r["bpc"] for r in results] for cell, results in found.items()}
            close = [cell for cell in args.cells if needs_third_seed(bpc, cell)]
            extra = missing_runs(runs, corpus, ["lstm", *close] if close else [], [max(args.seeds) + 1])
            if extra:
                print(f"{corpus}: a third seed for {', '.join(cell for cell, _ in extra)}", flush=True)
                train_all(args.corpus_dir, corpus, extra, args.minutes, runs)
                found = collect(runs, corpus, args.cells, held_out)
        report(corpus, found)
        print(json.dumps({cell: [{k: r[k] for k in ("seed", "bpc", "steps")} for r in results]
                          for cell, results in found.items()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
