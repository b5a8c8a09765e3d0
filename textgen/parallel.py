"""How a training batch is spread over the CPU's cores: row groups, and TensorFlow's thread pools.

An LSTM's recurrence is a chain of small steps: per time step one (rows, units) @ (units,
4*units) matmul and a few gate operations, each too small to split well across cores (TensorFlow
runs such a matmul on one thread). But the rows of a batch are independent streams until the loss,
so the model runs the batch as `parallel_parts` groups of rows, each through its own copy of the
layer stack, head and loss; TensorFlow's executor runs the groups side by side, one per core.

With one group per core every heavy op already has a core of its own, and TensorFlow's intra-op
pool only adds a second thread per core to which mid-sized ops (a concat, a transpose) hand half
their work and then wait for it to be scheduled. `configure_threads` switches that pool off for
such runs: bench/RESULTS.md has the measurements.
"""

from __future__ import annotations

import os

# Fewest rows worth a group of their own: below this the per-step matmul is too small to pay for
# another loop's overhead. On 2 cores, batch 32 runs as 2 x 16 rows and batch 64 as 2 x 32.
MIN_ROWS_PER_PART = 16


def available_cpus() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def parallel_parts(batch: int | None, cpus: int | None = None) -> int:
    """How many row groups a batch of `batch` streams runs as: one per core, with at least
    MIN_ROWS_PER_PART rows each; 1 when the batch size is not known statically."""
    if batch is None:
        return 1
    return max(1, min(cpus or available_cpus(), batch // MIN_ROWS_PER_PART))


def row_split_sizes(batch: int, parts: int) -> list[int]:
    """Sizes of `parts` contiguous row groups covering `batch` rows, as equal as possible."""
    return [batch // parts + (1 if k < batch % parts else 0) for k in range(parts)]


def split_rows(tensors: list, sizes: list[int]) -> list[list]:
    """Tensors sharing a batch dimension -> for each group of `sizes` rows, its slice of each."""
    import tensorflow as tf

    pieces = [tf.split(t, sizes) for t in tensors]
    return [[p[k] for p in pieces] for k in range(len(sizes))]


def concat_rows(groups: list[list]) -> list:
    """The inverse of `split_rows`: each tensor's slices joined back along the batch."""
    import tensorflow as tf

    return [tf.concat(list(pieces), axis=0) for pieces in zip(*groups)]


def thread_plan(rows_per_process: int, cpus: int, gpus: int) -> tuple[int, int] | None:
    """(intra-op, inter-op) pool sizes for a training process, or None to keep TensorFlow's.

    Only when the fused CPU path runs (no GPU) and the process's rows fill one group per core.
    """
    if gpus or cpus < 2 or parallel_parts(rows_per_process, cpus) < cpus:
        return None
    return 1, cpus


def configure_threads(rows_per_process: int) -> tuple[int, int] | None:
    """Apply `thread_plan` to TensorFlow; the sizes set, or None if left alone.

    Must run before TensorFlow executes anything: after that its pools are fixed, and this keeps
    them (for instance when textgen is used inside a larger TensorFlow program).
    """
    import tensorflow as tf

    plan = thread_plan(rows_per_process, available_cpus(), len(tf.config.list_physical_devices("GPU")))
    if plan is None:
        return None
    try:
        tf.config.threading.set_intra_op_parallelism_threads(plan[0])
        tf.config.threading.set_inter_op_parallelism_threads(plan[1])
    except RuntimeError:  # TensorFlow is already running in this process
        return None
    return plan
