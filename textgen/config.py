"""Configuration dataclasses: the one place where every default lives.

`ModelConfig` is saved with every run (it is all that is needed to rebuild the network);
`TrainConfig` records how the run was trained; `SampleConfig` holds the sampler's knobs.
The CLI takes its option defaults from these classes. No TensorFlow import here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

from textgen.errors import TextgenError


DEFAULT_EPOCHS = 10  # training budget when none of epochs, steps, minutes is set
INT32_MAX = 2**31 - 1
MAX_SAMPLES = 10_000  # --num-samples: samples are generated side by side, one batch row each


@dataclass
class ModelConfig:
    """Shape of the character language model: embedding -> stacked LSTM -> logits."""

    vocab_size: int = 0  # set from the corpus vocabulary
    embedding_dim: int = 64
    units: int = 256
    num_layers: int = 2
    dropout: float = 0.0  # between stacked layers, training only

    def parameter_count(self) -> int:
        """Trainable parameters: embedding, each layer's kernel/recurrent_kernel/bias, the head."""
        e, u, v = self.embedding_dim, self.units, self.vocab_size
        layers = sum(4 * u * ((e if i == 0 else u) + u + 1) for i in range(self.num_layers))
        return v * e + layers + u * v + v


@dataclass
class TrainConfig:
    """How a run is trained. Exactly one budget applies first: epochs, steps or minutes."""

    batch_size: int = 64
    seq_len: int = 100
    learning_rate: float = 2e-3
    clip_norm: float = 5.0  # gradient clipping by global norm; 0 disables
    epochs: int | None = None
    steps: int | None = None
    minutes: float | None = None
    val_fraction: float = 0.1  # held out from the end of the corpus
    eval_every: int = 200  # steps between validations (and checkpoints)
    eval_batches: int = 20  # at most this many windows per validation
    keep: int = 3  # newest checkpoints kept (the best one is always kept too)
    seed: int = 1234
    encoding: str = "utf-8"

    def epoch_budget(self) -> int | None:
        """Epochs to train in all: --epochs, or DEFAULT_EPOCHS when no budget is given at all."""
        if self.epochs is None and self.steps is None and self.minutes is None:
            return DEFAULT_EPOCHS
        return self.epochs


@dataclass
class SampleConfig:
    """Sampler knobs. temperature 0 means greedy argmax; top_k 0 and top_p 1.0 disable filtering."""

    temperature: float = 1.0
    length: int = 500
    prime: str = ""
    seed: int | None = None
    top_k: int = 0
    top_p: float = 1.0
    num_samples: int = 1

    def validate(self) -> None:
        """Refuse option values that make no sense, one line each."""
        if not self.temperature >= 0 or self.temperature == float("inf"):
            raise TextgenError(f"--temp must be 0 (greedy) or positive, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise TextgenError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise TextgenError(f"--top-k must be 0 (off) or positive, got {self.top_k}")
        if self.length < 0:
            raise TextgenError(f"--length must be 0 or positive, got {self.length}")
        if self.num_samples < 1:
            raise TextgenError(f"--num-samples must be at least 1, got {self.num_samples}")
        # upper bounds: the sampler counts in int32, and each sample is one row of one batch
        if self.top_k > INT32_MAX:
            raise TextgenError(f"--top-k must be at most {INT32_MAX}, got {self.top_k}")
        if self.length > INT32_MAX:
            raise TextgenError(f"--length must be at most {INT32_MAX}, got {self.length}")
        if self.num_samples > MAX_SAMPLES:
            raise TextgenError(f"--num-samples must be at most {MAX_SAMPLES}, got {self.num_samples}")


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass."""
    return dataclasses.asdict(config)


def from_dict(cls: type, data: Any) -> Any:
    """Rebuild a config dataclass from a dict, refusing unknown or mistyped fields."""
    if not isinstance(data, dict):
        raise TextgenError(f"{cls.__name__} must be a JSON object, got {type(data).__name__}")
    types = {f.name: f.type for f in fields(cls)}
    unknown = sorted(set(data) - set(types))
    if unknown:
        raise TextgenError(f"{cls.__name__} has unknown field(s): {', '.join(unknown)}")
    for name, value in data.items():
        if not _fits(value, types[name]):
            raise TextgenError(f"{cls.__name__}.{name} has the wrong type: {value!r}")
    return cls(**data)


def _fits(value: Any, annotation: str) -> bool:
    """Whether a JSON value fits a field annotated `int`, `float`, `str` or `X | None`."""
    allowed = {part.strip() for part in str(annotation).split("|")}
    if value is None:
        return "None" in allowed
    if isinstance(value, bool):
        return "bool" in allowed
    if isinstance(value, int):
        return bool(allowed & {"int", "float"})
    if isinstance(value, float):
        return "float" in allowed
    return isinstance(value, str) and "str" in allowed
