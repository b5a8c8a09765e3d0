"""`--precision auto`: which arithmetic a run trains in on this machine, and why.

* NVIDIA GPUs: mixed bfloat16 from compute capability 8.0 (Ampere and later: bfloat16 tensor
  cores, no loss scaling needed), mixed float16 on 7.x (Volta, Turing: float16 tensor cores, with
  Keras's dynamic loss scaling), float32 on older ones.
* CPUs: float32. Many current CPUs multiply bfloat16 natively (Intel AVX512-BF16 / AMX, AMD Zen 4,
  Arm BF16); `cpu_bf16` reports whether this one does, and `textgen info` says so, but mixed
  bfloat16 becomes the CPU default only once it is measured to train to an equal or better
  bits/char in the same time (bench/QUALITY.md); until then it is opt-in (`--precision
  mixed_bfloat16`).

In every mixed mode the weights, the cell state's update, the logits and the loss stay float32
(Keras dtype policies); checkpoints are float32 either way. No TensorFlow import at module level.
"""

from __future__ import annotations

from pathlib import Path

AUTO = "auto"
CONCRETE = ("float32", "mixed_float16", "mixed_bfloat16")
X86_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU has native bfloat16 matrix instructions (from /proc/cpuinfo's flags on
    Linux; False where that cannot be read)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags = set(value.split())
            return bool(flags & set(X86_BF16_FLAGS)) or "bf16" in flags  # x86, or Arm's BF16
    return False


def choose_precision(requested: str, gpu_capabilities: list[tuple[int, int]],
                     cpu_has_bf16: bool) -> tuple[str, str]:
    """(the precision to train in, why): `requested` unless it is "auto".

    `gpu_capabilities`: the (major, minor) compute capability of each visible GPU (empty on a
    CPU-only machine)."""
    if requested != AUTO:
        return requested, "as asked"
    if gpu_capabilities:
        capability = min(gpu_capabilities)
        if capability >= (8, 0):
            return "mixed_bfloat16", f"GPU compute capability {capability[0]}.{capability[1]}: bfloat16 tensor cores"
        if capability >= (7, 0):
            return "mixed_float16", f"GPU compute capability {capability[0]}.{capability[1]}: float16 tensor cores"
        return "float32", f"GPU compute capability {capability[0]}.{capability[1]}: no tensor cores"
    if cpu_has_bf16:
        return "float32", ("CPU with native bfloat16, but bfloat16's quality at a time budget is not "
                           "measured yet; --precision mixed_bfloat16 uses it")
    return "float32", "CPU without native bfloat16 matrix instructions"


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
    return choose_precision(requested, gpu_capabilities(), cpu_bf16())
