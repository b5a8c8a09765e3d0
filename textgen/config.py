"""Configuration dataclasses: the one place where every default lives.

`ModelConfig` is saved with every run (it is all that is needed to rebuild the network);
`TrainConfig` records how the run was trained; `SampleConfig` holds the sampler's knobs.
The CLI takes its option defaults from these classes. No TensorFlow import here.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
from dataclasses import dataclass, fields
from typing import Any

from textgen.errors import TextgenError

DEFAULT_EPOCHS = 10  # training budget when none of epochs, steps, minutes is set
INT32_MAX = 2**31 - 1
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")  # auto: textgen.precision
STRATEGIES = ("auto", "single", "mirrored", "multiworker")  # auto: textgen.distribute
MAX_PARAMETERS = 2**31 - 1  # larger models are refused before TensorFlow tries to allocate them
MAX_SEED = 2**32 - 1  # training seeds: what numpy's and TensorFlow's seeding accept
SEED_LIMIT = 2**31  # sampling seeds are 0 .. SEED_LIMIT - 1 (sample, viz, serve, export); exports
# already in users' hands reduce theirs modulo SEED_LIMIT in their graph, which keeps these as they are
TEMPERATURE = 1.0  # sampling temperature when none is given (sample, viz --sample, serve)
LN2 = math.log(2.0)  # nats per bit: a loss in nats / LN2 is bits per character
HEAD_BIASES = ("unigram", "zeros")  # how the output layer's bias starts (TrainConfig.head_bias)
MAX_SAMPLES = 10_000  # --num-samples: samples are generated side by side, one batch row each
# the cells `--cell` offers (textgen.cell.CELLS registers the same names; tests/test_cells_cli.py holds
# them equal): name -> (gate blocks side by side in the kernels, per-unit weight vectors beside them)
CELL_SHAPES = {"lstm": (4, 0), "peephole": (4, 3), "cifg": (3, 0), "gru": (3, 3),  # gru: its 2nd bias row
               "nfg": (3, 0), "noaf": (4, 0)}
CELL_NAMES = tuple(CELL_SHAPES)
# Greff et al.'s harmful ablations (textgen.lstm_ablations), for bench/cells.py: they train, sample and
# evaluate like any cell, but only the other four are held to every downstream command
EXPERIMENT_CELLS = ("nfg", "noaf")


@dataclass
class ModelConfig:
    """Shape of the character language model: embedding -> stacked LSTM -> logits."""

    vocab_size: int = 0  # set from the corpus vocabulary
    embedding_dim: int = 64
    units: int = 256
    num_layers: int = 2
    dropout: float = 0.0  # between stacked layers, training only
    embedding_dropout: float = 0.0  # on the embedding output, training only
    recurrent_dropout: float = 0.0  # on h_{t-1} into each LSTM's recurrent kernel, one mask per
    # window for all its time steps (variational), training only
    head_shortlist: int | None = None  # output layer: 0 = one softmax over the vocabulary; N = a
    # two-level (adaptive) softmax, the N most frequent characters plus "the rest" at every
    # position and the rest's own softmax where the target is one of them; None = shortlist_for's
    # choice, resolved when a run starts
    cell: str = "lstm"  # the recurrent cell, one of CELL_NAMES (textgen.cell: its equations)

    def parameter_count(self) -> int:
        """Trainable parameters: embedding, each layer's kernel/recurrent_kernel/bias (and the
        cell's per-unit vectors: the peepholes), the head."""
        e, u, v = self.embedding_dim, self.units, self.vocab_size
        blocks, vectors = CELL_SHAPES.get(self.cell, CELL_SHAPES["lstm"])
        layers = sum(blocks * u * ((e if i == 0 else u) + u + 1) + vectors * u for i in range(self.num_layers))
        head_outputs = v + 1 if shortlist_for(self) else v  # a two-level head scores "the rest" too
        return v * e + layers + (u + 1) * head_outputs


SHORTLIST = 1024  # the two-level head's frequent characters, for vocabularies over twice as many


def shortlist_for(config: ModelConfig) -> int:
    """Characters the output layer scores at every position: 0 for one softmax over all.

    `config.head_shortlist` when set (0, or a shortlist that leaves no rare characters, is one
    softmax); else SHORTLIST for vocabularies of more than 2 x SHORTLIST characters. A
    6,000-character step spends two thirds of its time in the output layer (bench/QUALITY.md);
    on Chinese text the 1,000 most frequent characters cover ~90% of positions, so the two-level
    head computes ~3.7x fewer logits, and the probabilities stay exact.
    """
    shortlist = config.head_shortlist
    if shortlist is None:
        shortlist = SHORTLIST if config.vocab_size > 2 * SHORTLIST else 0
    return shortlist if 0 < shortlist < config.vocab_size - 1 else 0


@dataclass
class TrainConfig:
    """How a run is trained. Exactly one budget applies first: epochs, steps or minutes."""

    batch_size: int = 64
    seq_len: int = 100
    learning_rate: float = 2e-3  # peak learning rate, reached after warm-up
    warmup_steps: int = 100  # linear warm-up from ~0 to learning_rate
    lr_decay: str = "cosine"  # "cosine" (to min_lr_ratio x learning_rate at the budget's end) or "none"
    min_lr_ratio: float = 0.1
    clip_norm: float = 5.0  # gradient clipping by global norm; 0 disables
    epochs: int | None = None
    steps: int | None = None
    minutes: float | None = None
    val_fraction: float = 0.1  # held out from the end of the corpus
    eval_every: int = 200  # steps between validations (and checkpoints)
    eval_batches: int = 20  # at most this many windows per validation
    log_every: int = 10  # steps between reads of the loss: divergence guard, bar, TensorBoard
    keep: int = 3  # newest checkpoints kept (the best one is always kept too)
    patience: int | None = None  # stop after this many validations without a new best
    weight_decay: float = 0.0  # decoupled (AdamW) decay of the LSTM and output kernels, per unit of learning rate
    seed: int = 1234
    encoding: str = "utf-8"
    min_count: int = 1  # characters occurring fewer times fold into one unknown symbol (1: none do)
    head_bias: str = "unigram"  # "unigram": the output bias starts at the log character frequencies
    # of the training text, so the first steps need not learn them (0.8 bits per character better
    # after 5 minutes on a 5,346-character Chinese corpus, bench/QUALITY.md), or "zeros"
    strategy: str = "auto"  # auto, single, mirrored or multiworker (see textgen.distribute)
    precision: str = "auto"  # auto (resolved when a run starts), float32, mixed_float16, mixed_bfloat16

    def epoch_budget(self) -> int | None:
        """Epochs to train in all: --epochs, or DEFAULT_EPOCHS when no budget is given at all."""
        if self.epochs is None and self.steps is None and self.minutes is None:
            return DEFAULT_EPOCHS
        return self.epochs


@dataclass
class FinetuneConfig:
    """`textgen train CORPUS --init-from RUN`: what a fine-tuning run uses where no option is given.
    Its other settings are a `TrainConfig`'s; its model is the base run's (`textgen.finetune`)."""

    learning_rate: float = 1e-3  # peak learning rate when --learning-rate is not given (a fresh
    # schedule: TrainConfig.warmup_steps of warm-up, then decay over the new budget)
    checkpoint: str = "best"  # which checkpoint of the base run to start from: best or last
    calibration_chars: int = 4096  # positions of the new text scored to calibrate the new
    # characters' output biases against the base model's logits


# Named shapes and recipes; explicit options override them. Parameter counts are for a
# 65-character vocabulary (tinyshakespeare).
PRESETS: dict[str, dict] = {
    "tiny": {  # ~0.22M parameters: a quick look on any CPU in minutes
        "model": {"embedding_dim": 32, "units": 128, "num_layers": 2, "dropout": 0.0},
        "train": {"batch_size": 32, "seq_len": 64, "learning_rate": 3e-3},
    },
    "small": {  # ~0.87M: the CPU workhorse (2 x 256). Batch 32, not 64: on a CPU the step time
        # is nearly proportional to the batch (bench/step_time.py), so 32 streams read text about
        # as fast and update twice as often
        # (10 minutes on tinyshakespeare: 2.14 val bpc against 2.22 with batch 64, bench/QUALITY.md).
        # Recurrent dropout and weight decay: 30 minutes overfit without them (best checkpoint
        # at a quarter of the run, 2.122 held-out bpc) and not with them (2.035); 10 minutes are
        # level (2.080 against 2.088 on the same host), bench/QUALITY.md.
        # The lstm cell: the gru beat it at 5 minutes on one core (the cell ablation, bench/cells.py)
        # but not at this preset's 10 minutes on both cores: level on tinyshakespeare (2.087 against
        # 2.078, two seeds each), behind on songci (5.905 against 5.828), bench/QUALITY.md
        "model": {"embedding_dim": 64, "units": 256, "num_layers": 2, "dropout": 0.1,
                  "recurrent_dropout": 0.15},
        "train": {"batch_size": 32, "seq_len": 100, "learning_rate": 3e-3, "weight_decay": 0.1},
    },
    "medium": {  # ~5.6M: 3 x 512, for a GPU or a long CPU run
        "model": {"embedding_dim": 128, "units": 512, "num_layers": 3, "dropout": 0.2,
                  "embedding_dropout": 0.1},
        "train": {"batch_size": 64, "seq_len": 128, "learning_rate": 2e-3},
    },
    "large": {  # ~22M: 3 x 1024, for a GPU
        "model": {"embedding_dim": 256, "units": 1024, "num_layers": 3, "dropout": 0.25,
                  "embedding_dropout": 0.1},
        "train": {"batch_size": 128, "seq_len": 256, "learning_rate": 1e-3},
    },
}


def apply_preset(name: str | None, model_options: dict, train_options: dict) -> tuple[dict, dict]:
    """The preset's model and train options, overridden by the options given explicitly."""
    if name is None:
        return model_options, train_options
    if name not in PRESETS:
        raise TextgenError(f"unknown --preset {name!r}; choose one of {', '.join(PRESETS)}")
    preset = PRESETS[name]
    return {**preset["model"], **model_options}, {**preset["train"], **train_options}


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_options(model: ModelConfig, train: TrainConfig) -> None:
    """Refuse option values (from the command line or a run.json) that cannot train: NaN or
    infinite rates, seeds numpy refuses, shapes below 1. All in one line. Needs no vocabulary:
    a new run checks its options before it reads the corpus."""
    problems = []
    for name in ("embedding_dim", "units", "num_layers"):
        if not isinstance(getattr(model, name), int) or getattr(model, name) < 1:
            problems.append(f"--{name.replace('_', '-')} must be at least 1, got {getattr(model, name)}")
    for name in ("batch_size", "seq_len", "eval_every", "eval_batches", "log_every", "keep", "min_count"):
        if not isinstance(getattr(train, name), int) or getattr(train, name) < 1:
            problems.append(f"--{name.replace('_', '-')} must be at least 1, got {getattr(train, name)}")
    for name in ("steps", "epochs"):
        value = getattr(train, name)
        if value is not None and (not isinstance(value, int) or value < 1):
            problems.append(f"--{name} must be at least 1, got {value}")
    if model.cell not in CELL_NAMES:
        problems.append(f"--cell must be one of {', '.join(CELL_NAMES)}, got {model.cell!r}")
    shortlist = model.head_shortlist
    if shortlist is not None and (not isinstance(shortlist, int) or isinstance(shortlist, bool) or shortlist < 0):
        problems.append(f"--head-shortlist must be 0 (one softmax) or a number of characters, got {shortlist}")
    for name in ("dropout", "embedding_dropout", "recurrent_dropout"):
        value = getattr(model, name)
        if not (_finite(value) and 0 <= value < 1):
            problems.append(f"--{name.replace('_', '-')} must be a number at least 0 and below 1, got {value}")
    if not (isinstance(train.warmup_steps, int) and train.warmup_steps >= 0):
        problems.append(f"--warmup-steps must be 0 or more, got {train.warmup_steps}")
    if train.lr_decay not in ("cosine", "none"):
        problems.append(f"--lr-decay must be 'cosine' or 'none', got {train.lr_decay!r}")
    if train.head_bias not in HEAD_BIASES:
        problems.append(f"--head-bias must be one of {', '.join(HEAD_BIASES)}, got {train.head_bias!r}")
    if not (_finite(train.min_lr_ratio) and 0 <= train.min_lr_ratio <= 1):
        problems.append(f"--min-lr-ratio must be between 0 and 1, got {train.min_lr_ratio}")
    if train.patience is not None and (not isinstance(train.patience, int) or train.patience < 1):
        problems.append(f"--patience must be at least 1, got {train.patience}")
    if not (_finite(train.learning_rate) and train.learning_rate > 0):
        problems.append(f"--learning-rate must be a positive number, got {train.learning_rate}")
    if not (_finite(train.weight_decay) and train.weight_decay >= 0):
        problems.append(f"--weight-decay must be 0 (off) or a positive number, got {train.weight_decay}")
    if not (_finite(train.clip_norm) and train.clip_norm >= 0):
        problems.append(f"--clip-norm must be 0 (off) or a positive number, got {train.clip_norm}")
    if train.minutes is not None and not (_finite(train.minutes) and train.minutes > 0):
        problems.append(f"--minutes must be a positive number, got {train.minutes}")
    if train.strategy not in STRATEGIES:
        problems.append(f"--strategy must be one of {', '.join(STRATEGIES)}, got {train.strategy!r}")
    if train.precision not in PRECISIONS:
        problems.append(f"--precision must be one of {', '.join(PRECISIONS)}, got {train.precision!r}")
    if not (isinstance(train.seed, int) and 0 <= train.seed <= MAX_SEED):
        problems.append(f"--seed must be between 0 and {MAX_SEED}, got {train.seed}")
    if problems:
        raise TextgenError("; ".join(problems))


def check_size(model: ModelConfig) -> None:
    """Refuse a model too large to allocate, once its vocabulary (`model.vocab_size`) is known."""
    params = model.parameter_count()
    if params > MAX_PARAMETERS:
        raise TextgenError(f"the model would have {params:,} parameters, more than textgen trains "
                           f"({MAX_PARAMETERS:,}); lower --units, --num-layers or --embedding-dim")


def check_seed(seed, name: str = "--seed") -> None:
    """Refuse a sampling seed outside 0 .. SEED_LIMIT - 1, in one line naming `name`. The one rule
    of `textgen sample`, `viz --sample`, `serve` (a request's 'seed') and every export's `generate`."""
    if not (isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < SEED_LIMIT):
        raise TextgenError(f"{name} must be an integer from 0 to {SEED_LIMIT - 1}, got {seed!r}")


def seed_or_random(seed: int | None) -> int:
    """`seed`, or a random accepted seed when there is none (None)."""
    return secrets.randbelow(SEED_LIMIT) if seed is None else seed


def check_temperature(temperature, name: str = "--temp") -> None:
    """Refuse a sampling temperature that is not a finite number >= 0 (0 is greedy), in one line."""
    if not (_finite(temperature) and temperature >= 0):
        raise TextgenError(f"{name} must be 0 (greedy) or a positive number, got {temperature!r}")


@dataclass
class SampleConfig:
    """Sampler knobs. temperature 0 means greedy argmax; top_k 0 and top_p 1.0 disable filtering.
    Validated when made (and when `dataclasses.replace` makes a new one): once per command."""

    temperature: float = TEMPERATURE
    length: int = 500
    prime: str = ""
    seed: int | None = None
    top_k: int = 0
    top_p: float = 1.0
    num_samples: int = 1

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Refuse option values that make no sense, one line each."""
        check_temperature(self.temperature)
        if self.seed is not None:
            check_seed(self.seed)
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
        raise TextgenError(f"{cls.__name__} has unknown field(s): {', '.join(map(repr, unknown))}")
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


EXPORT_FORMATS = ("savedmodel", "litert", "onnx", "keras")
QUANTIZATIONS = ("none", "dynamic")  # dynamic: int8 weights, float32 activations (LiteRT only)


@dataclass
class ExportConfig:
    """`textgen export`'s knobs. Every export is checked against textgen's own model before it
    is published: its logits on `check_chars` characters may differ by at most `tolerance`
    (float32 exports; a quantized one reports its difference and bits per character instead)."""

    format: str = "savedmodel"  # one of EXPORT_FORMATS
    quantize: str = "none"  # one of QUANTIZATIONS
    onnx_opset: int = 17  # ONNX operator set of the onnx export (onnxruntime 1.14+ runs it)
    check_chars: int = 200
    tolerance: float = 1e-4
    eval_chars: int = 2000  # characters scored to report a quantized export's bits per character
    eval_text: str | None = None  # file to score them on (default: text sampled from the model)

    def validate(self) -> None:
        """Refuse values no export can use, one line each."""
        if self.format not in EXPORT_FORMATS:
            raise TextgenError(f"unknown --format {self.format!r}; choose one of {', '.join(EXPORT_FORMATS)}")
        if self.quantize not in QUANTIZATIONS:
            raise TextgenError(f"unknown --quantize {self.quantize!r}; choose one of "
                               f"{', '.join(QUANTIZATIONS)}")
        if self.quantize != "none" and self.format != "litert":
            raise TextgenError(f"--quantize {self.quantize} applies to --format litert only; "
                               f"drop it for --format {self.format}")

VIZ_FORMATS = ("html", "json", "npz")


@dataclass
class VizConfig:
    """`textgen viz` knobs: what to trace and how big the page may get."""

    top_k: int = 5  # next-character guesses kept per character
    max_chars: int = 20_000  # longer texts are cut (with a notice)
    max_mb: float = 10.0  # the HTML page's size budget: precision, then length, give way to it
    window: int = 512  # characters per compiled trace call; the state is carried across windows
    format: str = "html"  # html (the page), json or npz (the raw trace)
    temperature: float = TEMPERATURE  # for --sample

    def validate(self) -> None:
        """Refuse option values that make no sense, one line each."""
        for name in ("top_k", "max_chars", "window"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise TextgenError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if not (_finite(self.max_mb) and self.max_mb > 0):
            raise TextgenError(f"--max-mb must be a positive number, got {self.max_mb}")
        check_temperature(self.temperature)
        if self.format not in VIZ_FORMATS:
            raise TextgenError(f"--format must be one of {', '.join(VIZ_FORMATS)}, got {self.format!r}")

@dataclass
class ServeConfig:
    """`textgen serve`: where it listens, who may talk to it, how many requests share the compiled
    loop, and the limits that keep any request from holding unbounded memory or compute."""

    host: str = "127.0.0.1"  # loopback only; another host only when asked for
    port: int = 8000
    allow_host: tuple[str, ...] = ()  # Host names answered beyond loopback's and --host's ("*": any)
    allow_origin: tuple[str, ...] = ()  # web origins (scheme://host[:port]) whose pages may call the API
    api_key: str | None = dataclasses.field(default=None, repr=False)  # Bearer key the API then requires
    log_requests: bool = False  # one line per request on stderr
    max_batch: int = 64  # rows (choices) generated side by side in one compiled loop
    chunk: int = 64  # characters per row per graph call: the join/leave and cancel granularity
    max_queue: int = 256  # rows waiting for a free slot; more requests get 429
    max_prompt: int = 4096  # characters in one prompt
    max_tokens: int = 4096  # characters one choice may ask for
    default_max_tokens: int = 256  # when a request gives no max_tokens (or --max-tokens if smaller)
    max_n: int = 16  # choices per request (n x number of prompts)
    max_trace: int = 8192  # characters one /v1/trace request may trace (the playground's colouring)
    max_body_bytes: int = 1 << 20  # request bodies larger than this are refused (413)
    shutdown_timeout: float = 10.0  # seconds a graceful shutdown waits for responses to end

    @property
    def request_max_tokens(self) -> int:
        """max_tokens of a request that gives none: the default, or --max-tokens if smaller."""
        return min(self.default_max_tokens, self.max_tokens)

    def validate(self) -> None:
        """Refuse option values that cannot serve, one line."""
        problems = []
        for name in ("max_batch", "chunk", "max_queue", "max_prompt", "max_tokens", "max_n",
                     "max_trace", "max_body_bytes", "default_max_tokens"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                problems.append(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.port <= 65535:
            problems.append(f"--port must be between 0 and 65535, got {self.port}")
        if self.max_prompt + self.max_tokens > INT32_MAX - self.chunk:  # the loop counts steps in int32
            problems.append(f"--max-prompt + --max-tokens must be below {INT32_MAX - self.chunk:,}")
        if self.max_n > self.max_queue:
            problems.append(f"--max-n ({self.max_n}) must not exceed --max-queue ({self.max_queue})")
        problems += _access_problems(self)
        if problems:
            raise TextgenError("; ".join(problems))


def _access_problems(config: ServeConfig) -> list[str]:
    """What is wrong with `serve`'s --allow-host, --allow-origin and --api-key values."""
    problems = []
    for name in config.allow_host:
        if not name or any(c in name for c in "/@ \t") or (name.count(":") == 1):
            problems.append(f"--allow-host takes a host name or address without scheme or port "
                            f"(such as example.com), got {name!r}")
    for origin in config.allow_origin:
        scheme, _, rest = origin.partition("://")
        if origin not in ("*", "null") and (scheme not in ("http", "https") or not rest
                                            or any(c in rest for c in "/?# ")):
            problems.append(f"--allow-origin takes an origin such as https://app.example.com (scheme, "
                            f"host and port only), got {origin!r}")
    key = config.api_key
    if key is not None and (not key or not key.isprintable() or " " in key):
        problems.append("the API key (--api-key or TEXTGEN_API_KEY) must be non-empty printable "
                        "characters without spaces")
    return problems
