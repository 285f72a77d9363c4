"""Every setting and its default, in one place: the model's and training's dataclasses, the choices each option
takes, and how a spec's [model] and [training] sections and explicit command-line flags combine with them.
Imports no torch, so `din-export --help` stays quick."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol

from .errors import SpecError

VARIANTS = ("din", "base", "din-seq")  # the architecture (--model)
BASE_POOLINGS = ("mean", "sum")
ACTIVATIONS = ("prelu", "dice", "sigmoid", "relu")
WEIGHTINGS = ("raw", "softmax")
FORMS = ("folded", "plain")  # how the attention unit's first layer computes (and which graph --graph exports)
SCHEDULES = ("constant", "cosine")
DEVICES = ("auto", "cpu", "cuda")
AUGMENTATIONS = ("none", "crop", "mask")
PRECISIONS = ("fp32", "int8", "fp16")
CALIBRATIONS = ("none", "platt", "isotonic")  # [training] calibration: fitted on validation after training
CALIBRATION_BINS = 10  # equal-mass bins of the expected calibration error and the reliability diagram
RANK_CUTOFFS = (5, 10, 20)  # `evaluate --rank`: the K of HR@K and NDCG@K
DEFAULT_MAX_AUC_DROP = 0.002  # `export --precision`: validation AUC a reduced precision may lose
COMPARE_MAX_AUC_DROP = 0.0  # `compare`: AUC a new model may lose (beyond its 95% interval) and still pass
COMPARE_RESAMPLES = 1000  # `compare`: bootstrap resamples of the users
ENGINES = ("duckdb", "spark")  # `prepare --engine`: this machine out of core, or a Spark job
LAYOUTS = ("inline", "reference")  # how `prepare` writes histories: list columns, or references into a store
PREPARE_CHUNK_ROWS = 200_000  # samples `prepare` builds and writes at once
PREPARE_BLOCK_EVENTS = 1_000_000  # events (whole users) `prepare` handles at once: its memory besides DuckDB's
PREPARE_MEMORY_LIMIT = "1GB"  # DuckDB's working memory while `prepare` sorts the log; past it, DuckDB spills
SPLIT_MODES = ("per_user", "global_time")  # [split] mode
HOLDOUT = {"per_user": 1, "global_time": 0.1}  # [split] valid and test by mode: a user's last event; a tenth of the time range
STRATEGIES = ("uniform", "popularity")  # [sampling] strategy
SYNTHETIC_SAMPLES = 100_000  # rows of the built-in data (--samples)
# A warm start's training settings where neither the spec nor a flag sets them: fewer epochs at a lower rate
# than a fresh model's, chosen by benchmarks/daily_retraining.py --schedules (docs: "Retraining every day").
WARM_START_TRAINING: dict[str, Any] = {"epochs": 5, "learning_rate": 1e-3, "warmup_steps": 0}


@dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters. `variant`: din (target attention over the behaviours), base (the paper's BaseModel:
    mean or sum pooling), din-seq (a Transformer encoder over the behaviours, then target attention)."""

    variant: str = "din"
    embedding_dim: int = 16
    attention_hidden: tuple[int, ...] = (80, 40)
    attention_activation: str = "sigmoid"
    attention_weighting: str = "raw"
    mlp_hidden: tuple[int, ...] = (200, 80)
    mlp_activation: str = "dice"  # chosen by benchmarks/recipe_search.py (README, "Training recipe")
    embedding_init_std: float = 0.2
    dropout: float = 0.0
    batch_norm: bool = False
    base_pooling: str = "mean"
    encoder_heads: int = 2
    encoder_layers: int = 1

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, not {self.variant!r}")
        for name in (self.attention_activation, self.mlp_activation):
            if name not in ACTIVATIONS:
                raise ValueError(f"activation must be one of {ACTIVATIONS}, not {name!r}")
        if self.embedding_dim < 1:
            raise ValueError("embedding_dim must be positive")
        if self.base_pooling not in BASE_POOLINGS:
            raise ValueError(f"base_pooling must be one of {BASE_POOLINGS}, not {self.base_pooling!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), not {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


@dataclass(frozen=True)
class TrainConfig:
    """Training settings. The defaults are the recipe chosen by benchmarks/recipe_search.py (README, "Training
    recipe"): batches of 512, Adam at 5e-3 after 100 warm-up steps, decayed by a cosine to zero, the paper's
    mini-batch aware L2 at 0.1, no augmentation."""

    epochs: int = 10
    batch_size: int = 512
    learning_rate: float = 5e-3
    patience: int = 2
    seed: int = 0
    progress: bool = True
    embedding_l2: float = 0.1
    lr_schedule: str = "cosine"
    warmup_steps: int = 100
    epoch_samples: int = 0  # samples per epoch, drawn afresh each epoch (validation every so many); 0: the whole split
    augmentation: str = "none"
    augmentation_rate: float = 0.0
    device: str = "auto"
    calibration: str = "platt"  # chosen by benchmarks/calibration.py (docs: "Calibrated probabilities")

    def __post_init__(self) -> None:
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"calibration must be one of {CALIBRATIONS}, not {self.calibration!r}")
        if self.lr_schedule not in SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {SCHEDULES}, not {self.lr_schedule!r}")
        if self.embedding_l2 < 0:
            raise ValueError("embedding_l2 must be >= 0")
        if self.warmup_steps < 0:
            raise ValueError("warmup_steps must be >= 0")
        if self.epoch_samples < 0:
            raise ValueError("epoch_samples must be >= 0")
        if self.augmentation not in AUGMENTATIONS:
            raise ValueError(f"augmentation must be one of {AUGMENTATIONS}, not {self.augmentation!r}")
        if not 0 <= self.augmentation_rate < 1:
            raise ValueError(f"augmentation_rate must be in [0, 1), not {self.augmentation_rate}")
        if self.epochs < 0:
            raise ValueError("epochs must be >= 0")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, not {self.device!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _build(kind: type, section: str, values: dict[str, Any]) -> Any:
    known = {f.name for f in fields(kind)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SpecError(f"[{section}]: unknown setting(s) {unknown}; known: {sorted(known)}")
    converted = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    try:
        return kind(**converted)
    except (TypeError, ValueError) as error:
        raise SpecError(f"[{section}]: {error}") from None


class Sections(Protocol):
    """Where a spec's [model] and [training] sections arrive from (a data.spec.Spec)."""

    model: dict[str, Any]
    training: dict[str, Any]


@dataclass(frozen=True)
class TuneConfig:
    """`din-export tune`: the trial budget, each trial's most epochs, the seed of sampler, split and trials, and an
    optional wall-clock limit in seconds."""

    trials: int = 20
    epochs: int = 5
    seed: int = 0
    timeout: float | None = None


def resolve(spec: Sections, model_flags: dict[str, Any], training_flags: dict[str, Any]) -> tuple[ModelConfig, TrainConfig]:
    """Explicit flags override the spec's sections, which override the defaults."""
    return (_build(ModelConfig, "model", {**spec.model, **model_flags}),
            _build(TrainConfig, "training", {**spec.training, **training_flags}))
