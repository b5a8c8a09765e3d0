"""Tests for `textgen.parallel`: row groups, the thread-pool plan, and applying it to a fresh
TensorFlow process (and leaving a running one alone)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from textgen.parallel import (
    MIN_ROWS_PER_PART,
    configure_threads,
    parallel_parts,
    row_split_sizes,
    thread_plan,
)


@pytest.mark.parametrize("batch, parts, expected", [
    (64, 2, [32, 32]), (65, 2, [33, 32]), (10, 3, [4, 3, 3]), (7, 1, [7]), (5, 5, [1] * 5),
])
def test_row_split_sizes_cover_the_batch_evenly(batch, parts, expected):
    sizes = row_split_sizes(batch, parts)
    assert sizes == expected and sum(sizes) == batch


def test_parallel_parts_one_group_per_core_with_enough_rows_each():
    assert parallel_parts(64, cpus=2) == 2
    assert parallel_parts(64, cpus=8) == 64 // MIN_ROWS_PER_PART  # rows bound it, not cores
    assert parallel_parts(2 * MIN_ROWS_PER_PART - 1, cpus=2) == 1  # too few rows for two groups
    assert parallel_parts(1, cpus=2) == 1  # one stream (evaluation, sampling warm-up)
    assert parallel_parts(None, cpus=2) == 1  # batch size not static
    assert parallel_parts(64, cpus=1) == 1


def test_thread_plan_only_when_every_core_gets_a_row_group():
    assert thread_plan(64, cpus=2, gpus=0) == (1, 2)
    assert thread_plan(32, cpus=2, gpus=0) == (1, 2)
    assert thread_plan(16, cpus=2, gpus=0) is None  # one group: keep the intra-op pool
    assert thread_plan(64, cpus=8, gpus=0) is None  # 4 groups on 8 cores
    assert thread_plan(64, cpus=1, gpus=0) is None
    assert thread_plan(64, cpus=2, gpus=1) is None  # cuDNN path: TensorFlow's own pools


def test_configure_threads_leaves_a_running_tensorflow_alone():
    import tensorflow as tf

    tf.constant(1.0) + 1.0  # TensorFlow is running in this process
    before = (tf.config.threading.get_intra_op_parallelism_threads(),
              tf.config.threading.get_inter_op_parallelism_threads())
    assert configure_threads(10_000) is None
    assert (tf.config.threading.get_intra_op_parallelism_threads(),
            tf.config.threading.get_inter_op_parallelism_threads()) == before


def test_configure_threads_sets_the_pools_of_a_fresh_process():
    script = (
        "import os; os.environ['TF_CPP_MIN_LOG_LEVEL'] = '3'\n"
        "import textgen.parallel as p\n"
        "p.available_cpus = lambda: 2\n"
        "print(p.configure_threads(64), p.configure_threads(8))\n"
        "import tensorflow as tf\n"
        "print(tf.config.threading.get_intra_op_parallelism_threads(),"
        " tf.config.threading.get_inter_op_parallelism_threads())\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["(1, 2) None", "1 2"]


def test_split_rows_and_concat_rows_round_trip():
    import numpy as np
    import tensorflow as tf

    from textgen.parallel import concat_rows, split_rows

    a = tf.reshape(tf.range(12), (6, 2))
    b = tf.reshape(tf.range(6.0), (6, 1))
    groups = split_rows([a, b], [4, 2])
    assert [[t.shape[0] for t in group] for group in groups] == [[4, 4], [2, 2]]
    np.testing.assert_array_equal(groups[1][0].numpy(), [[8, 9], [10, 11]])
    joined = concat_rows(groups)
    np.testing.assert_array_equal(joined[0].numpy(), a.numpy())
    np.testing.assert_array_equal(joined[1].numpy(), b.numpy())
