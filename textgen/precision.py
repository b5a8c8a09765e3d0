"""`--precision auto`: which arithmetic a run trains in on this machine, and why.

* NVIDIA GPUs: mixed bfloat16 from compute capability 8.0 (Ampere and later: bfloat16 tensor
  cores, no loss scaling needed), mixed float16 on 7.x (Volta, Turing: float16 tensor cores, with
  Keras's dynamic loss scaling), float32 on older ones.
* x86 CPUs with native bfloat16 (`avx512_bf16` or `amx_bf16` among /proc/cpuinfo's flags): mixed
  bfloat16. Measured on two such CPUs (issue 25: `--preset small --minutes 10` on
  tinyshakespeare): held-out bits/char as good as float32's or better in the same time, at 1.16-1.8x
  the characters per second (the README quotes the figures).
* Every other CPU, Arm's BF16 included (unmeasured): float32.

The rule is `choose_precision`, a pure function of the GPUs' compute capabilities and the CPU's
flags, so tests inject both. `cpu_flags` reads /proc/cpuinfo, or the environment variable
TEXTGEN_CPU_FLAGS when it is set (space-separated flags; the test suite sets it empty so that
`auto` is float32 on every CPU it runs on). A run resolves `auto` once, when it starts, and keeps
that precision for good (run.json), on any machine it is resumed on.

In every mixed mode the weights, the cell state's update, the logits and the loss stay float32
(Keras dtype policies); checkpoints are float32 either way. No TensorFlow import at module level.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

AUTO = "auto"
CONCRETE = ("float32", "mixed_float16", "mixed_bfloat16")
X86_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # auto picks mixed bfloat16 with either
ARM_BF16_FLAG = "bf16"  # Arm's BF16: recognised, not measured, so auto keeps float32
FLAGS_ENV = "TEXTGEN_CPU_FLAGS"


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags: $TEXTGEN_CPU_FLAGS if set, else the first `flags` (x86) or
    `Features` (Arm) line of /proc/cpuinfo (or of `cpuinfo`); empty where neither can be read."""
    if cpuinfo is None:
        if FLAGS_ENV in os.environ:
            return set(os.environ[FLAGS_ENV].split())
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return set(value.split())
    return set()


def cpu_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU has native bfloat16 matrix instructions (x86 AVX512-BF16 or AMX, Arm
    BF16), from `cpu_flags`."""
    flags = cpu_flags(cpuinfo)
    return bool(flags & {*X86_BF16_FLAGS, ARM_BF16_FLAG})


def choose_precision(requested: str, gpu_capabilities: list[tuple[int, int]],
                     cpu_flags: Collection[str]) -> tuple[str, str]:
    """(the precision to train in, why): `requested` unless it is "auto".

    `gpu_capabilities`: the (major, minor) compute capability of each visible GPU (empty on a
    CPU-only machine); `cpu_flags`: the CPU's feature flags (`cpu_flags()` on this machine)."""
    if requested != AUTO:
        return requested, "as asked"
    if gpu_capabilities:
        capability = min(gpu_capabilities)
        if capability >= (8, 0):
            return "mixed_bfloat16", f"GPU compute capability {capability[0]}.{capability[1]}: bfloat16 tensor cores"
        if capability >= (7, 0):
            return "mixed_float16", f"GPU compute capability {capability[0]}.{capability[1]}: float16 tensor cores"
        return "float32", f"GPU compute capability {capability[0]}.{capability[1]}: no tensor cores"
    native = [flag for flag in X86_BF16_FLAGS if flag in cpu_flags]
    if native:
        return "mixed_bfloat16", f"CPU with native bfloat16 ({', '.join(native)})"
    if ARM_BF16_FLAG in cpu_flags:
        return "float32", ("Arm CPU with bfloat16 (bf16), not measured yet; "
                           "--precision mixed_bfloat16 uses it")
    return "float32", "CPU without native bfloat16"


def gpu_capabilities() -> list[tuple[int, int]]:
    """Compute capabilities of the GPUs TensorFlow sees."""
    import tensorflow as tf

    found = []
    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        if capability:
            found.append(tuple(capability))
    return found


def resolve(requested: str) -> tuple[str, str]:
    """`choose_precision` for this machine."""
    if requested != AUTO:
        return requested, "as asked"
    return choose_precision(requested, gpu_capabilities(), cpu_flags())
