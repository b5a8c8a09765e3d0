"""Devices and workers: which `tf.distribute` strategy trains a run, and the few collective
operations the trainer needs on top of it.

`--strategy`:

* `single`: TensorFlow's default strategy (one device; the plain code path, no replicas).
* `mirrored`: `tf.distribute.MirroredStrategy` over every GPU, or without GPUs over every logical
  CPU device (normally one; tests configure two).
* `multiworker`: `tf.distribute.MultiWorkerMirroredStrategy`, configured by the standard
  `TF_CONFIG` environment variable; worker 0 (or the task of type "chief") is the chief.
* `auto`: mirrored when several GPUs are visible, else single.

The functions that only read `TF_CONFIG` import no TensorFlow, so a bad cluster description is
refused before anything slow happens. `MultiWorkerMirroredStrategy` must be created before any other
TensorFlow operation runs, so `make_strategy` is the first thing the trainer does.
"""

from __future__ import annotations

import functools
import json
import os

from textgen.config import STRATEGIES
from textgen.errors import TextgenError

CANNOT_LISTEN = "this worker cannot listen at its address in TF_CONFIG"



def tf_config() -> dict | None:
    """The parsed `TF_CONFIG` ({"cluster": ..., "task": ...}), None when unset; TextgenError when
    it is not a usable cluster description."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return None
    hint = ('set TF_CONFIG to JSON such as {"cluster": {"worker": ["host1:port", "host2:port"]}, '
            '"task": {"type": "worker", "index": 0}}')
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise TextgenError(f"TF_CONFIG is not valid JSON ({e.msg} at character {e.pos}); {hint}") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise TextgenError(f"TF_CONFIG needs a 'cluster' and a 'task' object; {hint}")
    kind, index = task.get("type"), task.get("index")
    members = cluster.get(kind)
    if not isinstance(members, list) or not isinstance(index, int) or not 0 <= index < len(members):
        raise TextgenError(f"TF_CONFIG's task {kind!r} #{index!r} is not in its cluster "
                           f"({', '.join(f'{k}: {len(v)}' for k, v in cluster.items() if isinstance(v, list))}); "
                           f"{hint}")
    return config


def is_chief_task(strategy_name: str) -> bool:
    """Whether this process writes checkpoints, TensorBoard events and samples: always, except for
    the non-chief workers of a multi-worker run (the chief is the task of type "chief", or worker 0
    when the cluster has no chief)."""
    if strategy_name != "multiworker":
        return True
    config = tf_config()
    if config is None:
        raise TextgenError("--strategy multiworker needs the TF_CONFIG environment variable, which "
                           "describes the cluster; see the README's multi-host example")
    kind, index = config["task"]["type"], config["task"]["index"]
    if "chief" in config["cluster"]:
        return kind == "chief"
    return kind == "worker" and index == 0


def worker_count(strategy_name: str) -> int:
    """Processes that share each global batch: the cluster's chief and workers under
    multiworker, else 1."""
    config = tf_config() if strategy_name == "multiworker" else None
    if config is None:
        return 1
    return sum(len(config["cluster"].get(kind, [])) for kind in ("chief", "worker"))


def make_strategy(name: str):
    """The `tf.distribute.Strategy` for `--strategy name` (see the module docstring)."""
    import tensorflow as tf

    if name == "multiworker":
        is_chief_task(name)  # TF_CONFIG must be present and sane
        return _strategy("multiworker")
    return _strategy(resolve_strategy(name, len(tf.config.list_physical_devices("GPU"))))


@functools.lru_cache(maxsize=None)
def _strategy(kind: str):
    """One strategy object per process and kind: strategies created side by side number their
    collective operations alike, and TensorFlow then mixes up the second's with the first's."""
    import tensorflow as tf

    if kind == "multiworker":
        try:
            return tf.distribute.MultiWorkerMirroredStrategy()
        except tf.errors.UnknownError as e:
            if "Could not start gRPC server" not in str(e):
                raise
            raise TextgenError(f"{CANNOT_LISTEN} ({e.message}): another process holds its port, or "
                               "the address is not this machine's; free the port or change TF_CONFIG") from None
    if kind == "single":
        return tf.distribute.get_strategy()
    if tf.config.list_physical_devices("GPU"):
        return tf.distribute.MirroredStrategy()
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices=cpus)


def resolve_strategy(name: str, gpu_count: int) -> str:
    """The concrete strategy `--strategy name` means with `gpu_count` GPUs visible: "auto" is
    mirrored with several GPUs, else single."""
    if name not in STRATEGIES:
        raise TextgenError(f"unknown --strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    if name == "auto":
        return "mirrored" if gpu_count >= 2 else "single"
    return name


class Replicas:
    """The strategy's replicas as the trainer sees them: `count` copies of the model, replica r
    training rows r*rows .. (r+1)*rows of each global batch and carrying their LSTM state."""

    def __init__(self, strategy, batch_size: int, multiworker: bool = False):
        self.strategy = strategy
        self.count = strategy.num_replicas_in_sync
        self.multiworker = multiworker
        if batch_size % self.count:
            raise TextgenError(f"--batch-size {batch_size} does not split evenly across "
                               f"{self.count} replicas; use a multiple of {self.count}")
        self.rows = batch_size // self.count  # batch rows per replica

    def my_rows(self, tensor):
        """Inside a replica: this replica's rows of a global (batch, ...) tensor."""
        import tensorflow as tf

        if self.count == 1:
            return tensor
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        return tensor[replica * self.rows : (replica + 1) * self.rows]

    def sum(self, values):
        """Inside a replica: the sum over all replicas (an all-reduce; identity with one)."""
        import tensorflow as tf

        if self.count == 1:
            return values
        return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, values)

    def scatter(self, arrays: list, dtype=None) -> list:
        """Global (batch, ...) arrays -> per-replica values holding each replica's rows."""
        import tensorflow as tf

        if self.count == 1:
            return [tf.constant(a, dtype=dtype) for a in arrays]

        def rows_of(context):
            start = context.replica_id_in_sync_group * self.rows
            return [tf.constant(a[start : start + self.rows], dtype=dtype) for a in arrays]

        return self.strategy.experimental_distribute_values_from_function(rows_of)

    def gather(self, values: list) -> list:
        """Per-replica values -> global numpy arrays, rows in replica order. With several workers
        this is a collective: every worker must call it at the same point."""
        if self.count == 1:
            return [v.numpy() for v in values]
        return [self.strategy.gather(v, axis=0).numpy() for v in values]

    def first(self, value):
        """A value that every replica computed alike (e.g. an all-reduced loss), as one tensor."""
        return self.strategy.experimental_local_results(value)[0]

    def agree(self, number: float, chief: bool) -> float:
        """The chief's `number`, on every worker (a collective under multiworker; else itself).
        Used for decisions taken from local clocks, which workers must share to stay in step."""
        if not self.multiworker:
            return number
        return float(self._workers_sum([number if chief else 0.0])[0])

    def any(self, flags: list[bool]) -> list[bool]:
        """For each flag, whether any worker raised it (one collective under multiworker)."""
        if not self.multiworker:
            return [bool(f) for f in flags]
        return [total > 0 for total in self._workers_sum([1.0 if f else 0.0 for f in flags])]

    def _workers_sum(self, numbers: list[float]):
        """Sum over workers of numbers given by each worker (its first replica counts them)."""
        import tensorflow as tf

        local = len(self.strategy.extended.worker_devices)  # replicas on this worker

        def value(context):
            first_local = context.replica_id_in_sync_group % local == 0
            return tf.constant([n if first_local else 0.0 for n in numbers], tf.float64)

        per_replica = self.strategy.experimental_distribute_values_from_function(value)
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None).numpy()
