"""How fast can one core of this CPU multiply the matrices of a batched sampling step? The bound
behind `textgen serve`'s batching target (issue 15, bench/RESULTS.md section 4).

A 2 x 256 model (embedding 64, vocabulary 65) costs per row and character: layer 1's recurrent
matmul (256 -> 1024; its input part is a table lookup), layer 2's (512 -> 1024) and the head
(256 -> 65). Serving 32 rows on 2 cores runs two loops of 16 rows, one per core. This script
times those matmuls on one thread, in the fastest float32 GEMMs at hand — PyTorch's (MKL/oneDNN)
and XLA's (what textgen's compiled loop uses) — next to a large square GEMM (the core's practical
peak), and prints the GFLOP/s a 16-row step would need for a given concurrent/serial ratio.

    python bench/gemm_ceiling.py --one-row-us 92 --ratio 8 --efficiency 0.78

--one-row-us: the engine's measured one-row step (bench/serve_speed.py's `loop` figure);
--efficiency: the share of the loop's speed the HTTP server keeps at 32 clients (same source).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# (inputs, outputs) of one step's three matmuls, per row
LAYERS = ((256, 1024), (512, 1024), (256, 65))


def step_flops(rows: int) -> float:
    """Floating-point operations of one step's matmuls for `rows` rows."""
    return sum(2.0 * rows * k * n for k, n in LAYERS)


def best_time(fn, repeats: int = 5, number: int = 50) -> float:
    """Seconds per call: the best of `repeats` means over `number` calls (after a warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - start) / number)
    return min(times)


def torch_times(rows: int) -> tuple[float, float]:
    """(seconds for one step's matmuls, seconds for a 1024^3 GEMM), PyTorch, one thread."""
    import torch

    torch.set_num_threads(1)
    pairs = [(torch.randn(rows, k), torch.randn(k, n)) for k, n in LAYERS]
    big = torch.randn(1024, 1024)
    step = best_time(lambda: [a @ b for a, b in pairs], number=200)
    return step, best_time(lambda: big @ big, number=5)


def xla_time(rows: int, inner: int = 100) -> float:
    """Seconds for one step's matmuls inside an XLA-compiled loop of `inner` steps, one thread."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    weights = [tf.random.normal((k, n)) for k, n in LAYERS]
    x0 = [tf.random.normal((rows, k)) for k, _ in LAYERS]

    @tf.function(jit_compile=True)
    def loop():
        def body(i, acc):  # each step's inputs depend on the last, as in sampling
            xs = [x + 1e-9 * acc for x in x0]
            return i + 1, acc + sum(tf.reduce_sum(tf.matmul(x, w)) for x, w in zip(xs, weights))
        return tf.while_loop(lambda i, _: i < inner, body, (0, tf.constant(0.0)))[1]

    return best_time(loop, number=3) / inner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--one-row-us", type=float, default=92.0)
    parser.add_argument("--ratio", type=float, default=8.0)
    parser.add_argument("--efficiency", type=float, default=0.78)
    parser.add_argument("--rows-per-core", type=int, default=16)
    args = parser.parse_args()
    rows = args.rows_per_core
    flops = step_flops(rows)
    torch_step, torch_big = torch_times(rows)
    xla_step = xla_time(rows)
    print(f"one thread, float32; a {rows}-row step's matmuls = {flops / 1e6:.1f} MFLOP")
    print(f"  PyTorch 1024^3 GEMM (practical peak): {2 * 1024 ** 3 / torch_big / 1e9:6.1f} GFLOP/s")
    print(f"  PyTorch, {rows}-row step:                {flops / torch_step / 1e9:6.1f} GFLOP/s "
          f"({torch_step * 1e6:.0f} us)")
    print(f"  XLA loop, {rows}-row step:               {flops / xla_step / 1e9:6.1f} GFLOP/s "
          f"({xla_step * 1e6:.0f} us)")
    # serial serves one row per step in one_row_us; concurrent serves 2 * rows rows per step
    budget_loop = 2 * rows * args.one_row_us / args.ratio  # us per step for the ratio, loop alone
    budget_served = budget_loop * args.efficiency
    for label, budget in (("the loop alone", budget_loop), ("through the server", budget_served)):
        print(f"{args.ratio:g}x over serial needs a {rows}-row step in {budget:.0f} us {label}: "
              f"{flops / (budget * 1e-6) / 1e9:.1f} GFLOP/s per core for the matmuls alone")


if __name__ == "__main__":
    main()
