"""`DPOTrainConfig`: every knob of one LoRA DPO run, in TRL's config-dataclass idiom.

Where each default comes from (README, "Defaults and where they come from"): neither paper
states any training hyper-parameter. LoRA r 128 / α 256 / dropout 0.05, lr 1e-7 and 1 epoch are
the official CSR code's (`scripts/run_train.sh`), which also uses a cosine schedule with 3 %
warm-up and trains the projector at 2e-5 (`--preset official` sets the schedule; the projector
stays frozen here). β 0.1, the linear schedule and batch 4 are our choices (TRL's defaults).
A config file (YAML or JSON) gives the same fields; command-line flags override it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from selfreward_vlm.core import urls
from selfreward_vlm.core.urls import is_http

# LLaVA-style VLMs: the language model's projections only; the vision tower and the projector
# stay frozen (the papers train the LM). Text-only LMs have no `language_model` in their names.
VLM_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
LM_LORA_TARGETS = r".*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"

# TRL 1.16 DPOTrainer loss types; "sigmoid" is DPO, ["sigmoid", "sft"] adds an SFT term on chosen.
KNOWN_LOSS_TYPES = frozenset(
    {
        "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard",
        "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
    }
)  # fmt: skip


class ConfigError(ValueError):
    """A config file or flag names an unknown field or an invalid value."""


@dataclass
class DPOTrainConfig:
    """One LoRA DPO training run (the module docstring says where each default comes from)."""

    model: str = field(metadata={"help": "hub id or local directory of the base (V)LM"})
    pairs: str = field(
        metadata={"help": "http://host:port/v1/datasets/NAME, or a JSONL file of PreferencePair"}
    )
    out: str = field(metadata={"help": "output dir: adapter/, checkpoints/, log.jsonl, summary"})
    images: str | None = field(
        default=None,
        metadata={"help": "JSONL pairs: dir of image files (named by id or any name: hashed), "
                  "or a JSON file mapping image id -> path"},
    )  # fmt: skip
    init_adapter: str | None = field(
        default=None, metadata={"help": "LoRA dir to continue training (previous iteration)"}
    )
    reference: str = field(
        default="base",
        metadata={"help": "'base' or a LoRA dir: the model the pairs were generated with"},
    )
    reference_logprobs: Literal["model", "service"] = field(
        default="model",
        metadata={"help": "'model': reference forward in the trainer; 'service': /v1/logprobs"},
    )
    service: str | None = field(
        default=None, metadata={"help": "service URL (default: taken from an HTTP `pairs`)"}
    )
    reference_name: str | None = field(
        default=None,
        metadata={"help": "the reference's adapter name on the service ('base' if reference "
                  "is base)"},
    )  # fmt: skip
    lora_r: int = 128
    lora_alpha: int = 256
    lora_dropout: float = field(
        default=0.05,
        metadata={"help": "written to adapter_config; in effect only with disable_dropout=False"},
    )
    disable_dropout: bool = field(
        default=True,
        metadata={"help": "TRL's default (and the official code's TRL): every dropout, LoRA's "
                  "included, is off during training"},
    )  # fmt: skip
    lora_target_modules: str | None = field(
        default=None, metadata={"help": "regex; default: the LM's q/k/v/o/gate/up/down projections"}
    )
    beta: float = 0.1
    lr: float = 1e-7
    loss_type: list[str] = field(default_factory=lambda: ["sigmoid"])
    loss_weights: list[float] | None = None
    epochs: float = 1.0
    max_steps: int = field(default=-1, metadata={"help": "-1: run `epochs` epochs"})
    batch_size: int = 4
    grad_accum: int = 1
    max_length: int | None = field(
        default=1024, metadata={"help": "prompt (image tokens included) + completion tokens"}
    )
    lr_scheduler_type: str = "linear"
    warmup_steps: float = field(default=0.0, metadata={"help": "steps; < 1: fraction of all"})
    seed: int = 42
    device: Literal["auto", "cpu", "cuda"] = "auto"
    bf16: bool | None = field(default=None, metadata={"help": "None: on where CUDA has bf16"})
    save_steps: int = 50
    save_total_limit: int | None = 2
    logging_steps: int = 1
    page_size: int = 256

    def __post_init__(self) -> None:
        if isinstance(self.loss_type, str):
            self.loss_type = [s.strip() for s in self.loss_type.split(",") if s.strip()]
        unknown = [t for t in self.loss_type if t not in KNOWN_LOSS_TYPES]
        if unknown or not self.loss_type:
            raise ConfigError(f"loss_type: unknown {unknown or self.loss_type}")
        if self.reference_logprobs not in ("model", "service"):
            raise ConfigError("reference_logprobs: must be 'model' or 'service'")
        if self.reference_logprobs == "service" and not self.service_url:
            raise ConfigError("reference_logprobs='service' needs `service` or an HTTP `pairs`")
        if self.reference_logprobs == "service" and self.reference_name is None:
            if self.reference != "base":
                raise ConfigError("reference_name: name of the reference adapter on the service")
            self.reference_name = "base"

    @property
    def service_url(self) -> str | None:
        """The service to talk to: `service`, else the base of an HTTP `pairs` URL."""
        if self.service:
            return self.service.rstrip("/")
        if is_http(self.pairs):
            return split_dataset_url(self.pairs)[0]
        return None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def split_dataset_url(url: str) -> tuple[str, str]:
    """`core.urls.split_dataset_url`, its error a `ConfigError` (a bad `pairs` setting)."""
    try:
        return urls.split_dataset_url(url)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (.yaml/.yml) or JSON config into a dict; dashes in keys become underscores."""
    text = Path(path).read_text()
    if str(path).endswith((".yaml", ".yml")):
        import yaml  # only here: the client install does not need pyyaml

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def build_config(config_file: str | Path | None = None, **overrides: Any) -> DPOTrainConfig:
    """File values, then every override that is not None (flags left unset do not clobber)."""
    values: dict[str, Any] = read_config_file(config_file) if config_file else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    names = {f.name for f in fields(DPOTrainConfig)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown config field(s): {', '.join(unknown)}")
    missing = [n for n in ("model", "pairs", "out") if not values.get(n)]
    if missing:
        raise ConfigError(f"missing required field(s): {', '.join(missing)}")
    types = {f.name: str(f.type) for f in fields(DPOTrainConfig)}
    return DPOTrainConfig(**{k: _coerce(k, types[k], v) for k, v in values.items()})


def _coerce(name: str, type_name: str, value: Any) -> Any:
    """Strings from a file or env into the field's scalar type (YAML reads `1e-7` as a string)."""
    if not isinstance(value, str) or type_name.startswith(("str", "Literal", "list")):
        return value
    try:
        if type_name.startswith("float"):
            return float(value)
        if type_name.startswith("int"):
            return int(value)
        if type_name.startswith("bool"):
            return {"true": True, "false": False}[value.strip().lower()]
    except (ValueError, KeyError):
        raise ConfigError(f"{name}: cannot read {value!r} as {type_name}") from None
    return value
