"""The settings of a training run: defaults, a TOML file, flags, in that order of precedence.

Every setting is a field of ``TrainConfig``; a TOML config uses the same names (``batch-size``
or ``batch_size``), with the schema of a CSV/Parquet file in its ``[data]`` table (see
``mtlkernels.data.schema``). ``to_toml()`` writes the resolved settings a run used.
"""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from typing import Any

import tomli_w

from mtlkernels._types import check_fields
from mtlkernels.build import METHODS, MODELS, ConfigError

BUILTIN_DATA = ("census", "census2", "synthetic", "recsys")
OPTIMIZERS = ("adam", "adamw", "sgd")
DSELECT_GATES = ("per-example", "static")
#: models with PPNet gates (``gate_fields``): PEPNet's towers, the experts of the others
GATED_MODELS = ("pepnet", "mmoe", "cgc", "ple")


@dataclass
class TrainConfig:
    """What to train, on what, and how. Defaults are the tuned Census group 1 MMoE (README)."""

    data: str = "census"            # census | census2 | synthetic | recsys | PATH (.csv/.parquet)
    data_options: dict = field(default_factory=dict)  # [data]: a file's schema; rows/correlation of generators
    tasks: list = field(default_factory=list)          # train only these tasks (single-task baselines)
    model: str = "mmoe"
    method: str = "ew"
    epochs: int = 12
    batch_size: int = 1024
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adam"
    ema_decay: float = 0.998         # scored/saved weights: their EMA with this decay per step (0: the last)
    seed: int = 0
    threads: int = 0                 # 0: torch's default (all cores)
    patience: int = 3                # epochs without a better validation score before stopping
    monitor: str = "mean_auc"        # mean_auc | mean_loss | a task name (its AUC, or -MSE for regression)
    embedding_dim: int = 16
    dense_projection: bool = False   # project the dense block to one embedding slot, else pass it through
    dense_bins: int = 16             # piecewise-linear quantile bins per dense column (0: the values alone)
    experts: int = 8
    dselect_k: int = 2               # experts each DSelect-k gate selects
    dselect_gates: str = "per-example"  # per-example | static DSelect-k gates
    dselect_entropy: float = 1e-6    # weight of DSelect-k's entropy regulariser
    gate_fields: list = field(default_factory=list)    # PPNet gate fields (pepnet: [] = all; mmoe/cgc/ple: experts)
    domain_fields: list = field(default_factory=list)  # EPNet domain fields (pepnet)
    gate_hidden: int = 0             # Gate NU hidden width (0: the gated layer's width)
    expert_hidden: list = field(default_factory=lambda: [256, 128])
    tower_hidden: list = field(default_factory=lambda: [64])
    bottom_hidden: list = field(default_factory=lambda: [256, 128])
    task_experts: int = 4
    shared_experts: int = 4
    levels: int = 2
    dropout: float = 0.0
    batch_norm: bool = False
    lower_bounds: list = field(default_factory=list)  # PE-LTR's per-task lower bounds
    diagnostics_every: int = 100     # steps between task-gradient cosine samples (0: never)
    eval_batch_size: int = 16384
    progress: bool = True

    def __post_init__(self):
        check(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        d = self.to_dict()
        options = d.pop("data_options")
        return tomli_w.dumps({**d, "data_options": options} if options else d)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        return cls(**normalise(d))

    def replace(self, **changes) -> "TrainConfig":
        return TrainConfig.from_dict({**self.to_dict(), **changes})


def normalise(d: dict[str, Any]) -> dict[str, Any]:
    """Keys with dashes become underscores; ``[data]`` becomes ``data_options``; unknown keys are
    errors naming them."""
    out = {}
    for k, v in d.items():
        k = k.replace("-", "_")
        if k == "data" and isinstance(v, dict):
            path = v.get("path")
            out["data_options"] = {**out.get("data_options", {}), **v}
            if path is not None:
                out["data"] = path
            continue
        out[k] = v
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(out) - known)
    if unknown:
        raise ConfigError(f"unknown setting(s) {unknown}; known: {', '.join(sorted(known))}")
    return out


def load_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return normalise(tomllib.load(f))
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {path}: not valid TOML ({exc})") from None


MAX_SEED = 2 ** 32 - 1


def check(c: TrainConfig) -> None:
    """Each setting on its own and the combinations that cannot work."""
    check_fields(c, "", ConfigError, dashes=True)
    if c.seed > MAX_SEED:
        raise ConfigError(f"seed must be at most {MAX_SEED}, got {c.seed}")
    if not all(isinstance(b, (int, float)) and not isinstance(b, bool) and b >= 0 for b in c.lower_bounds):
        raise ConfigError(f"lower-bounds must be numbers >= 0, got {c.lower_bounds!r}")
    if c.lower_bounds and c.method != "pe-ltr":
        raise ConfigError(f"lower-bounds applies to --method pe-ltr only, got --method {c.method}")
    def positive(name, minimum=1):
        v = getattr(c, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ConfigError(f"{name.replace('_', '-')} must be an integer >= {minimum}, got {v!r}")

    for name in ("epochs", "batch_size", "embedding_dim", "experts", "levels", "eval_batch_size", "dselect_k"):
        positive(name)
    for name in ("threads", "patience", "diagnostics_every", "task_experts", "shared_experts", "seed", "dense_bins",
                 "gate_hidden"):
        positive(name, 0)
    if c.task_experts == 0 and c.shared_experts == 0:
        raise ConfigError("task-experts and shared-experts cannot both be 0")
    if not c.lr > 0:
        raise ConfigError(f"lr must be a number > 0, got {c.lr!r}")
    if not c.weight_decay >= 0:
        raise ConfigError(f"weight-decay must be a number >= 0, got {c.weight_decay!r}")
    if not 0 <= c.ema_decay < 1:
        raise ConfigError(f"ema-decay must be in [0, 1), got {c.ema_decay!r}")
    if c.dselect_gates not in DSELECT_GATES:
        raise ConfigError(f"dselect-gates must be one of {', '.join(DSELECT_GATES)}, got {c.dselect_gates!r}")
    if not (isinstance(c.dselect_entropy, (int, float)) and 0 <= c.dselect_entropy < float("inf")):
        raise ConfigError(f"dselect-entropy must be a finite number >= 0, got {c.dselect_entropy!r}")
    if not 0 <= c.dropout < 1:
        raise ConfigError(f"dropout must be in [0, 1), got {c.dropout!r}")
    for name in ("expert_hidden", "tower_hidden", "bottom_hidden"):
        v = getattr(c, name)
        if not isinstance(v, (list, tuple)) or not v or any(isinstance(w, bool) or not isinstance(w, int) or w < 1
                                                            for w in v):
            raise ConfigError(f"{name.replace('_', '-')} must be a non-empty list of widths >= 1, got {v!r}")
    if c.model not in MODELS:
        raise ConfigError(f"model must be one of {', '.join(MODELS)}, got {c.model!r}")
    if c.method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {c.method!r}")
    if c.optimizer not in OPTIMIZERS:
        raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {c.optimizer!r}")
    if not c.data:
        raise ConfigError(f"data must be one of {', '.join(BUILTIN_DATA)} or a file path, got {c.data!r}")
    for name in ("gate_fields", "domain_fields"):
        v = getattr(c, name)
        if not isinstance(v, (list, tuple)) or any(not isinstance(f, str) or not f for f in v):
            raise ConfigError(f"{name.replace('_', '-')} must be a list of field names, got {v!r}")
    if c.gate_fields and c.model not in GATED_MODELS:
        raise ConfigError(f"gate-fields applies to --model {', '.join(GATED_MODELS)} (pepnet's towers, the others' "
                          f"experts), got --model {c.model}")
    if c.gate_hidden and c.model != "pepnet" and not c.gate_fields:
        raise ConfigError(f"gate-hidden applies to --model pepnet and to models with gate-fields, "
                          f"got --model {c.model}")
    if c.domain_fields and c.model != "pepnet":
        raise ConfigError(f"domain-fields (EPNet) applies to --model pepnet, got --model {c.model}")
    if any(not isinstance(t, str) or not t for t in c.tasks):
        raise ConfigError(f"tasks must be a list of task names, got {c.tasks!r}")
