"""Peak resident memory of training on a large corpus and of long sampling runs.

Every scenario runs in a fresh subprocess (`python bench/memory.py --child SCENARIO ...`), which
reports its own peak RSS (`resource.getrusage(RUSAGE_SELF).ru_maxrss`, i.e. VmHWM); when psutil
is installed the parent also polls the child's RSS every 20 ms as a cross-check.

Scenarios:
  baseline    import tensorflow + textgen and build a tiny model: the fixed cost of the runtime
  data        encode_corpus (the streaming encode into the memory-mapped id cache) + every
              StreamBatcher window of one epoch, in order, without TensorFlow: the data path
  train       textgen.launch.launch(...) on the generated corpus (encodes it into the cache,
              then 30 steps of a tiny model)
  sample-N    generate N characters from a tiny model with textgen's Sampler (one stream)

The training corpus is generated deterministically (random words from a small word list, with
punctuation and newlines) into a temporary directory, a few MB at a time.

    python bench/memory.py                    # 200 MB corpus
    python bench/memory.py --corpus-mb 50 --scenarios data,train
    python bench/memory.py --corpus-mb 2000 --scenarios data,train   # 2 GB: flat
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

GiB = 1024**3
MiB = 1024**2
TRAIN_TARGET = 2 * GiB
SAMPLE_LENGTHS = {"sample-100k": 100_000, "sample-1m": 1_000_000}
ALL_SCENARIOS = ["baseline", "data", "train", "sample-100k", "sample-1m"]

WORDS = (
    "the of and to in a is that for it as was with be by on not he i this are or his from at "
    "which but have an they you were her she there one all we can their has been if more when "
    "will would who so no time river stone garden winter silver market ancient quiet morning "
    "letter mountain harbour window lantern thunder meadow kingdom captain journey whisper"
).split()
PUNCT = [" ", " ", " ", " ", " ", " ", " ", ", ", ". ", "; ", "! ", "? ", ".\n", ",\n", "\n\n"]


# ---------------------------------------------------------------- corpus


def generate_corpus(path: Path, megabytes: float, seed: int = 0, chunk_words: int = 400_000) -> int:
    """Write ~`megabytes` MB of word salad to `path`, deterministically, a chunk at a time.

    Never holds more than one chunk (~3 MB of text) in memory. Returns the size in bytes.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    target = int(megabytes * 1_000_000)
    words = np.array(WORDS + [w.capitalize() for w in WORDS[:20]], dtype=object)
    punct = np.array(PUNCT, dtype=object)
    written = 0
    with open(path, "w", encoding="ascii", newline="\n") as f:
        while written < target:
            w = words[rng.integers(0, len(words), chunk_words)]
            p = punct[rng.integers(0, len(punct), chunk_words)]
            text = "".join((w + p).tolist())[: target - written]
            f.write(text)
            written += len(text)
    return written


# ---------------------------------------------------------------- child scenarios


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _tiny_model(vocab_size: int = 65):
    from textgen.config import ModelConfig
    from textgen.model import build_model

    return build_model(ModelConfig(vocab_size=vocab_size, embedding_dim=16, units=64, num_layers=1))


def child(scenario: str, corpus: str | None, workdir: str) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    start = time.perf_counter()
    info: dict = {"scenario": scenario}
    if scenario == "baseline":
        import tensorflow as tf  # noqa: F401

        _tiny_model()
    elif scenario == "data":
        from textgen.corpus_cache import encode_corpus
        from textgen.data import StreamBatcher, split_train_val

        marks = {}
        encoded = encode_corpus([corpus], "utf-8", Path(workdir) / "cache")
        marks["encode_corpus"] = _peak_rss_bytes()
        train, _ = split_train_val(encoded.ids, 0.1)
        batcher = StreamBatcher(train, 64, 100)
        for k in range(batcher.num_windows):  # a whole epoch, in training order
            batcher.window(k)
        marks["one_epoch_of_windows"] = _peak_rss_bytes()
        info.update(chars=encoded.num_chars, vocab=len(encoded.chars),
                    ids_dtype=str(encoded.ids.dtype), peak_after=marks)
    elif scenario == "train":
        from textgen.launch import launch

        runs = Path(workdir) / "runs"
        _run_dir, reason, progress = launch(
            [corpus], {"units": 64, "embedding_dim": 16, "num_layers": 1},
            {"steps": 30, "batch_size": 64, "seq_len": 100, "eval_every": 30, "eval_batches": 2},
            runs, show_progress=False, echo=lambda s: None,
        )
        info.update(steps=progress.step, reason=reason)
    elif scenario in SAMPLE_LENGTHS:
        import numpy as np

        from textgen.config import SampleConfig
        from textgen.sample import Sampler

        length = SAMPLE_LENGTHS[scenario]
        model = _tiny_model()
        sampler = Sampler(model)
        config = SampleConfig(temperature=1.0, length=length, seed=0)
        rss = []
        done = 0
        for chunk in sampler.generate(np.array([0], np.int32), config):
            done += chunk.shape[1]
            if done % 10_000 < chunk.shape[1]:
                rss.append(_current_rss_bytes())
        info.update(chars=done, rss_first=rss[0] if rss else None, rss_last=rss[-1] if rss else None)
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
    info["seconds"] = time.perf_counter() - start
    info["peak_rss"] = _peak_rss_bytes()
    return info


# ---------------------------------------------------------------- parent


def _poll_rss(pid: int, out: list, stop: threading.Event) -> None:
    try:
        import psutil
    except ImportError:
        return
    try:
        proc = psutil.Process(pid)
        while not stop.is_set():
            rss = proc.memory_info().rss
            out.append(rss)
            stop.wait(0.02)
    except psutil.Error:
        pass


def run_scenario(scenario: str, corpus: str | None, workdir: Path) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", scenario, "--workdir", str(workdir)]
    if corpus:
        cmd += ["--corpus", corpus]
    samples: list = []
    stop = threading.Event()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    poller = threading.Thread(target=_poll_rss, args=(proc.pid, samples, stop), daemon=True)
    poller.start()
    out, err = proc.communicate()
    stop.set()
    poller.join()
    if proc.returncode != 0:
        raise RuntimeError(f"scenario {scenario} failed ({proc.returncode}):\n{err[-3000:]}")
    line = [ln for ln in out.splitlines() if ln.startswith("RESULT ")][-1]
    info = json.loads(line[len("RESULT "):])
    info["psutil_peak"] = max(samples) if samples else None
    return info


def fmt(n: int | None) -> str:
    return "-" if n is None else f"{n / MiB:,.0f} MiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus-mb", type=float, default=200.0)
    parser.add_argument("--scenarios", default=",".join(ALL_SCENARIOS),
                        help=f"comma-separated subset of {','.join(ALL_SCENARIOS)}")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        info = child(args.child, args.corpus, args.workdir)
        print("RESULT " + json.dumps(info), flush=True)
        return 0

    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(scenarios) - set(ALL_SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; peak RSS per scenario, "
          "each in a fresh subprocess")
    with tempfile.TemporaryDirectory(prefix="textgen-mem-") as tmp:
        tmp = Path(tmp)
        corpus = None
        if {"data", "train"} & set(scenarios):
            corpus = str(tmp / "corpus.txt")
            t0 = time.perf_counter()
            size = generate_corpus(Path(corpus), args.corpus_mb)
            print(f"generated corpus: {size / 1e6:,.1f} MB in {time.perf_counter() - t0:.1f}s "
                  f"(peak RSS of this process {fmt(_peak_rss_bytes())})")
        results = {}
        for scenario in scenarios:
            workdir = tmp / scenario
            workdir.mkdir()
            info = run_scenario(scenario, corpus, workdir)
            results[scenario] = info
            extra = ""
            if scenario == "data":
                marks = ", ".join(f"{k} {fmt(v)}" for k, v in info["peak_after"].items())
                extra = f"  [{info['chars']:,} chars, vocab {info['vocab']}, {info['ids_dtype']}; peak after {marks}]"
            elif scenario in SAMPLE_LENGTHS:
                extra = (f"  [{info['chars']:,} chars; RSS at first/last 10k mark "
                         f"{fmt(info['rss_first'])} / {fmt(info['rss_last'])}]")
            elif scenario == "train":
                extra = f"  [{info['steps']} steps, stopped: {info['reason']}]"
            print(f"{scenario:12s} peak RSS {fmt(info['peak_rss']):>10s}  (psutil poll "
                  f"{fmt(info['psutil_peak'])}), {info['seconds']:.1f}s{extra}", flush=True)
            shutil.rmtree(workdir, ignore_errors=True)
    if "train" in results:
        peak = results["train"]["peak_rss"]
        verdict = "PASS" if peak < TRAIN_TARGET else "FAIL"
        print(f"training target: peak RSS < {fmt(TRAIN_TARGET)} on a {args.corpus_mb:g} MB corpus: "
              f"{fmt(peak)} -> {verdict}")
    if {"sample-100k", "sample-1m"} <= set(results):
        a, b = results["sample-100k"]["peak_rss"], results["sample-1m"]["peak_rss"]
        print(f"sampling: 100k chars {fmt(a)}, 1M chars {fmt(b)} (growth {(b - a) / MiB:+,.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
