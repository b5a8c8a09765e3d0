"""`textgen serve` under load: a real HTTP load generator against a real server on 127.0.0.1.

A 2 x 256 run (embedding 64, a 65-character vocabulary, weights after one training step, i.e.
random) is created in a temporary directory and served by `textgen serve --port 0` in its own
process. The load generator (httpx, asyncio) sends streaming `POST /v1/completions` requests
(prompt "The ", temperature 1.0, `--length` characters each, seeds 0, 1, ...) and measures:

  serial      the --clients (32) requests one after another: total characters / total seconds
  concurrent  the same requests from that many clients at once: total characters / wall seconds,
              and each request's first-character latency (request sent -> first text received)
  loop        the engine's compiled loop alone for 1 row and for --clients rows, in a child
              process while the server is idle: the ratio the concurrent/serial one cannot beat
  single      one client streaming `--single-length` characters: characters / seconds, against
              `textgen sample`'s generation speed for one stream of the same length
              (`Sampler.generate` on the same run, in a child process, while the server is idle;
              the load generator itself never imports TensorFlow)

Every request has a timeout and every loop a fixed count, so the run is bounded. Scenarios
alternate over `--repeats`; medians are reported with each repeat's figure.

    python bench/serve_speed.py                      # length 3000, single 6000, 3 repeats
    python bench/serve_speed.py --repeats 1 --length 500
    python bench/serve_speed.py --clients 64         # 64 at once (--max-batch 64 holds them all)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLIENTS = 32  # default --clients
PROMPT = "The "
ALPHABET = ("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" " \n!$&',-.:;?3")  # 65 characters
REQUEST_TIMEOUT = 300.0  # seconds, any single request


def make_run(root: Path) -> Path:
    """A 2 x 256 run over a 65-character vocabulary, trained for one step (random weights)."""
    import random

    rng = random.Random(0)
    corpus = root / "corpus.txt"
    corpus.write_text("".join(rng.choice(ALPHABET) for _ in range(20_000)) + ALPHABET, encoding="utf-8")
    command = [sys.executable, "-m", "textgen", "train", str(corpus), "--runs-dir", str(root / "runs"),
               "--name", "bench", "--units", "256", "--num-layers", "2", "--embedding-dim", "64",
               "--batch-size", "4", "--seq-len", "32", "--steps", "1", "--eval-every", "1",
               "--eval-batches", "1", "--quiet"]
    subprocess.run(command, check=True, timeout=600, capture_output=True)
    return root / "runs" / "bench"


def start_server(run: Path, max_batch: int) -> tuple[subprocess.Popen, str]:
    """`textgen serve RUN --port 0`, and its URL once it is ready."""
    command = [sys.executable, "-m", "textgen", "serve", str(run), "--port", "0", "--max-batch",
               str(max_batch), "--max-tokens", "100000"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        line = server.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
        if match:
            return server, match.group(1)
        if not line and server.poll() is not None:
            break
    server.kill()
    raise SystemExit("the server did not start")


async def stream(client, url: str, length: int, seed: int) -> tuple[float, float, int]:
    """One streaming completion: (seconds to the first text, seconds in all, characters)."""
    body = {"model": "bench", "prompt": PROMPT, "max_tokens": length, "temperature": 1.0,
            "seed": seed, "stream": True}
    start = time.perf_counter()
    first, chars = None, 0
    async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            text = json.loads(line[6:])["choices"][0]["text"]
            if text and first is None:
                first = time.perf_counter() - start
            chars += len(text)
    assert chars == length, (chars, length)
    return first, time.perf_counter() - start, chars


async def serial(url: str, length: int, clients: int) -> float:
    """chars/s of `clients` requests sent one after another."""
    import httpx

    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT) as client:
        start = time.perf_counter()
        chars = 0
        for seed in range(clients):
            chars += (await stream(client, url, length, seed))[2]
        return chars / (time.perf_counter() - start)


async def concurrent(url: str, length: int, clients: int) -> tuple[float, list[float]]:
    """chars/s of `clients` requests sent at once, and each one's first-character latency."""
    import httpx

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT, limits=limits) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*(stream(client, url, length, seed) for seed in range(clients)))
        wall = time.perf_counter() - start
    return sum(r[2] for r in results) / wall, [r[0] for r in results]


async def single(url: str, length: int) -> float:
    """chars/s of one streamed request."""
    import httpx

    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT) as client:
        _, seconds, chars = await stream(client, url, length, 99)
    return chars / seconds


def sampler_speed(run: str, length: int, seed: int) -> float:
    """`textgen sample`'s generation speed for one stream of `length` characters (chars/s),
    after a first generation that compiles the loop. Runs in a child process (`--sample-speed`):
    the load generator must not be a TensorFlow process: in development runs on two cores, the
    server's chunks took up to twice as long beside one that had just run the sampler."""
    import numpy as np

    from textgen.config import SampleConfig
    from textgen.inference import load_run
    from textgen.sample import Sampler
    from textgen.vocab import start_ids

    loaded = load_run(run, Path(run).parent)
    sampler = Sampler(loaded.model)
    ids, _ = start_ids(loaded.vocab, PROMPT)
    rate = 0.0
    for attempt in (seed, seed + 1):  # the first one compiles
        config = SampleConfig(temperature=1.0, length=length, seed=attempt, prime=PROMPT)
        start = time.perf_counter()
        total = sum(chunk.shape[1] for chunk in sampler.generate(np.asarray(ids), config))
        rate = total / (time.perf_counter() - start)
    return rate


def loop_speed(run: str, rows: int, chunks: int = 20) -> float:
    """The engine's compiled loop alone (no HTTP, no per-row Python): best chars/s of 3 timings
    of `chunks` chunks for `rows` rows, after one call that compiles."""
    import numpy as np
    import tensorflow as tf

    from textgen.inference import load_run
    from textgen.model import flatten_state
    from textgen.serve.batched_sampler import RowInputs, RowLoop, row_key

    loop = RowLoop(load_run(run, Path(run).parent).model, 64)
    zeros, no = np.zeros(rows, np.int32), tf.constant(False)
    inputs = RowInputs(zeros, np.zeros((rows, 64), np.int32), zeros, zeros, np.ones(rows, np.float32),
                       zeros, np.ones(rows, np.float32),
                       np.array([row_key(i, 0) for i in range(rows)], np.uint32))
    flat = flatten_state(loop.model.initial_state(rows))
    loop.run(inputs, flat, no)
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(chunks):
            ids, _, _, _, flat = loop.run(inputs, flat, no)
            ids.numpy()
        best = max(best, rows * 64 * chunks / (time.perf_counter() - start))
    return best


def in_child(*args: str) -> list[float]:
    """Run this script with `args` in a child process; the numbers it prints on its last line."""
    command = [sys.executable, __file__, *args]
    done = subprocess.run(command, check=True, timeout=600, capture_output=True, text=True)
    return [float(x) for x in done.stdout.strip().splitlines()[-1].split()]


def cpu_seconds(server_pid: int) -> tuple[float, float]:
    """CPU seconds used so far by the server process and by this one (user + system)."""
    import psutil

    server, me = psutil.Process(server_pid).cpu_times(), psutil.Process().cpu_times()
    return server.user + server.system, me.user + me.system


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q / 100 * len(ordered))) - 1))]


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios and print the figures (or, in a child process, one measurement)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=3000, help="characters per request")
    parser.add_argument("--single-length", type=int, default=6000, help="characters of the single stream")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--clients", type=int, default=CLIENTS,
                        help="concurrent clients (and serial requests)")
    parser.add_argument("--sample-speed", metavar="RUN", help=argparse.SUPPRESS)  # the child's job
    parser.add_argument("--loop-speed", metavar="RUN", help=argparse.SUPPRESS)  # the child's job
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.loop_speed:
        print(loop_speed(args.loop_speed, 1), loop_speed(args.loop_speed, args.clients))
        return 0
    if args.sample_speed:
        print(sampler_speed(args.sample_speed, args.single_length, args.seed))
        return 0
    if not (1 <= args.clients <= 256 and args.repeats >= 1 and min(args.length, args.single_length) >= 64):
        parser.error("--clients must be 1..256, --repeats >= 1, lengths >= 64")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    print(f"serve_speed: python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
          f"load average at start {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    clients = args.clients
    print(f"{clients} requests x {args.length} characters; single stream {args.single_length}; "
          f"{args.repeats} repeats; --max-batch {args.max_batch}")
    with tempfile.TemporaryDirectory() as tmp:
        run = make_run(Path(tmp))
        server, url = start_server(run, args.max_batch)
        try:
            asyncio.run(concurrent(url, 64, clients))  # first requests through every path
            rows = {"serial": [], "concurrent": [], "p95": [], "p50": [], "single": [], "sample": [],
                    "loop 1": [], f"loop {clients}": []}
            cores = []  # (server, load generator) CPU seconds per second during the concurrent phase
            for repeat in range(args.repeats):
                rows["single"].append(asyncio.run(single(url, args.single_length)))
                rows["sample"].append(in_child("--sample-speed", str(run), "--single-length",
                                               str(args.single_length), "--seed", str(2 * repeat + 1))[0])
                one, many = in_child("--loop-speed", str(run), "--clients", str(clients))
                rows["loop 1"].append(one)
                rows[f"loop {clients}"].append(many)
                rows["serial"].append(asyncio.run(serial(url, args.length, clients)))
                before, start = cpu_seconds(server.pid), time.perf_counter()
                rate, firsts = asyncio.run(concurrent(url, args.length, clients))
                wall = time.perf_counter() - start
                used = [a - b for a, b in zip(cpu_seconds(server.pid), before)]
                cores.append((used[0] / wall, used[1] / wall))
                rows["concurrent"].append(rate)
                rows["p95"].append(percentile(firsts, 95) * 1000)
                rows["p50"].append(percentile(firsts, 50) * 1000)
                print(f"repeat {repeat + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in rows.items()),
                      flush=True)
        finally:
            server.terminate()
            server.wait(timeout=60)
    median = {k: statistics.median(v) for k, v in rows.items()}
    ratios = [c / s for c, s in zip(rows["concurrent"], rows["serial"])]
    single_ratios = [a / b for a, b in zip(rows["single"], rows["sample"])]
    print(f"\nserial (1 client at a time):  {median['serial']:10,.0f} chars/s")
    print(f"concurrent ({clients} clients):      {median['concurrent']:10,.0f} chars/s")
    print(f"  ratio concurrent/serial: median {statistics.median(ratios):.2f} "
          f"(per repeat {', '.join(f'{r:.2f}' for r in ratios)}); target >= 8")
    print("  cores busy meanwhile (CPU seconds per second): server "
          + ", ".join(f"{s:.2f}" for s, _ in cores)
          + "; load generator " + ", ".join(f"{g:.2f}" for _, g in cores))
    print(f"  first-character latency at {clients} clients: p50 {median['p50']:.0f} ms, "
          f"p95 {median['p95']:.0f} ms (per repeat {', '.join(f'{v:.0f}' for v in rows['p95'])}); "
          "target p95 <= 300 ms")
    print(f"single client stream:         {median['single']:10,.0f} chars/s")
    print(f"textgen sample, 1 stream:     {median['sample']:10,.0f} chars/s")
    print(f"  ratio single/sample: median {statistics.median(single_ratios):.2f} "
          f"(per repeat {', '.join(f'{r:.2f}' for r in single_ratios)}); target >= 0.80")
    loop_ratios = [m / o for o, m in zip(rows["loop 1"], rows[f"loop {clients}"])]
    print(f"the compiled loop alone (no HTTP): 1 row {median['loop 1']:,.0f} chars/s, {clients} rows "
          f"{median[f'loop {clients}']:,.0f}: ratio {statistics.median(loop_ratios):.2f} "
          f"(per repeat {', '.join(f'{r:.2f}' for r in loop_ratios)})")
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
