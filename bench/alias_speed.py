"""4 KiB aliasing: the LSTM's wide matrix products, plain against padded (`textgen.fused`).

An LSTM of 256 units has 4 x 256 = 1,024 float32 gate columns: its kernels' rows, and the gate
gradients' rows, lie exactly 4 KiB apart, which maps every row to the same cache sets of the CPU.
This times, in one process on one thread, alternating the two forms repeat by repeat:

  weight gradient   (units x time*batch) @ (time*batch x G): h^T . dz, once per window and layer
  recurrent loop    `time` steps of (batch x units) @ (units x G), as the fused forward loop runs

each plain and with the G columns padded by `textgen.fused.PAD_COLUMNS` zeros (sliced off after),
for G = 3 x 256 (cifg, gru: no aliasing), 4 x 256 (lstm, peephole) and 4 x 512.

    python bench/alias_speed.py                  # batch 32, time 100 (the small preset's window)
    python bench/alias_speed.py --batch 64 --repeats 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--time", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calls", type=int, default=10, help="calls timed per repeat")
    args = parser.parse_args(argv)

    import tensorflow as tf

    from quality import cpu_model
    from textgen.fused import PAD_COLUMNS, matmul_unaliased, pad_columns

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    def timed(fn, *inputs) -> float:
        fn(*inputs)  # compile
        start = time.perf_counter()
        for _ in range(args.calls):
            result = fn(*inputs)
        result.numpy()
        return (time.perf_counter() - start) / args.calls * 1e3

    def weight_gradient(padded: bool):
        @tf.function
        def run(h, dz):
            if padded:  # as the fused backward pass computes it
                return matmul_unaliased(h, dz, transpose_a=True)
            return tf.matmul(h, dz, transpose_a=True)
        return run

    def recurrent_loop(padded: bool):
        @tf.function
        def run(h0, kernel):
            units, columns = kernel.shape
            weights = pad_columns(kernel) if padded else kernel

            def body(t, h):
                z = tf.matmul(h, weights)[:, :columns]  # (batch, G)
                return t + 1, tf.tanh(z[:, :units])
            return tf.while_loop(lambda t, h: t < args.time, body, (0, h0))[1]
        return run

    print(f"{cpu_model()}; one thread; batch {args.batch}, time {args.time}; padding {PAD_COLUMNS} columns; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| product | G | plain ms | padded ms | plain / padded (median of repeats) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for units, blocks in ((256, 3), (256, 4), (512, 4)):
        columns = blocks * units
        rows = args.batch * args.time
        cases = {
            "weight gradient": (weight_gradient, (tf.random.normal((rows, units)), tf.random.normal((rows, columns)))),
            "recurrent loop": (recurrent_loop, (tf.random.normal((args.batch, units)) * 0.1,
                                                tf.random.normal((units, columns)) * 0.05)),
        }
        for name, (make, inputs) in cases.items():
            plain_fn, padded_fn = make(False), make(True)
            plain, padded = [], []
            for _ in range(args.repeats):
                plain.append(timed(plain_fn, *inputs))
                padded.append(timed(padded_fn, *inputs))
            ratio = statistics.median(p / q for p, q in zip(plain, padded))
            print(f"| {name} | {columns} | {statistics.median(plain):.1f} | {statistics.median(padded):.1f} "
                  f"| {ratio:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
