"""Typed training configuration: dataclasses loaded from YAML, with dotted overrides from the command line.

    lram train --config configs/paper/xlstm_16M.yaml optim.lr=3e-4 train.steps=1000

A key that does not exist is an error that lists the valid keys of its section.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from lram.models.policy import LRAMConfig


@dataclass
class DomainConfig:
    """One training domain: where its tasks are and how the model treats them (registry defaults apply)."""

    name: str
    path: str  # a dataset root holding one folder per task (paper or packed layout)
    reward_scale: float | None = None  # None: the registry's value for this domain name
    num_actions: int | None = None  # valid discrete actions; None: the registry's / continuous
    in_context: bool | None = None  # windows span consecutive episodes (learning histories)
    return_condition: bool | None = None  # condition on the return-to-go (None: the registry's; default true)
    tasks: list[str] | None = None  # restrict to these task folders


PRESET_FIELDS = ("backbone", "d_model", "num_blocks")  # LRAMConfig fields set by the size preset and variant


def _model_config_fields() -> list[tuple]:
    """ModelConfig's fields: the preset's ``size`` and ``backbone`` variant, then every other LRAMConfig field
    with LRAMConfig's own type and default (one model config: nothing is repeated by hand)."""
    hints = get_type_hints(LRAMConfig)
    out = [("size", str, "tiny"),  # tiny small 16M 48M 110M 206M
           ("backbone", str, "xlstm[1:0]")]  # xlstm[1:0] xlstm[7:1] mamba transformer
    for f in dataclasses.fields(LRAMConfig):
        if f.name in PRESET_FIELDS:
            continue
        default = field(default=f.default) if f.default is not dataclasses.MISSING else field(
            default_factory=f.default_factory)
        out.append((f.name, hints[f.name], default))
    return out


def _build_model_config(self, **changes) -> LRAMConfig:
    """The :class:`LRAMConfig` of this section (``changes``: fields to replace, e.g. use_images)."""
    values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    values.update(changes)
    return LRAMConfig.from_preset(values.pop("size"), values.pop("backbone"), **values)


ModelConfig = dataclasses.make_dataclass(
    "ModelConfig", _model_config_fields(), namespace={"build": _build_model_config, "__module__": __name__})
ModelConfig.__doc__ = ("The model section: a size preset and backbone variant (lram.models.presets) plus any "
                       "field of lram.models.LRAMConfig (e.g. use_images, continuous_decode, backbone_options).")


@dataclass
class DataConfig:
    domains: list[DomainConfig] = field(default_factory=list)
    context: int = 50
    batch_size: int = 32  # windows per micro-batch per process
    workers: int = 0  # DataLoader workers per process
    within: str = "length"
    domain_order: str = "round_robin"
    domain_weights: dict | None = None
    valid_fraction: float = 0.025
    # standardise vector states per domain (statistics saved in the checkpoint, applied when acting); the
    # paper's code does not (its configs here set false)
    normalize_states: bool = True


@dataclass
class OptimConfig:
    lr: float = 1e-4
    min_lr: float = 1e-6
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 4000  # optimizer steps
    grad_clip: float = 0.25
    accumulation: int = 0  # micro-batches per optimizer step; 0 = one per domain (the paper)


@dataclass
class LoopConfig:
    steps: int = 1000  # optimizer steps (the cosine schedule ends here)
    stop_after: int = 0  # stop at this step without changing the schedule (0: at `steps`); resume later
    seed: int = 0
    # start from the weights of this checkpoint (a run or checkpoint folder; fine-tuning): weights only, a fresh
    # optimizer and schedule; the model config must match it; "" = random initialisation
    init_from: str = ""
    device: str = "auto"  # auto, cpu, cuda
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU), bf16, fp32
    compile: bool = False
    log_every: int = 10
    eval_every: int = 0  # 0: only at the end
    eval_batches: int = 10
    checkpoint_every: int = 100
    keep_last: int = 3
    distributed: str = "auto"  # auto/ddp (DDP when launched by torchrun), fsdp (sharded; large sizes), none
    # online evaluation at every eval (spec 5.1: 5 episodes per task), tasks split over ranks; 0: off
    rollout_episodes: int = 0
    rollout_envs: int = 5  # environments stepped together per task
    rollout_domains: list[str] = field(default_factory=list)  # default: every domain with an environment
    rollout_max_steps: int = 0  # cut episodes after this many steps (0: the environment's own limit)


@dataclass
class LoggingConfig:
    run_dir: str = "runs/default"
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "lram"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class ConfigError(ValueError):
    pass


def _build(cls, data: Any, where: str):
    """Instantiate dataclass ``cls`` from a mapping, recursively, with errors that name the key path."""
    if not dataclasses.is_dataclass(cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{where or 'config'}: unknown key(s) {unknown}; valid keys: {names}")
    kwargs = {}
    for name, value in data.items():
        t = hints[name]
        path = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(t):
            kwargs[name] = _build(t, value, path)
        elif get_origin(t) is list and dataclasses.is_dataclass(get_args(t)[0]):
            if not isinstance(value, list):
                raise ConfigError(f"{path}: expected a list, got {type(value).__name__}")
            kwargs[name] = [_build(get_args(t)[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
        else:
            kwargs[name] = _coerce(value, t, path)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where or 'config'}: {e}") from e


def _coerce(value, t, path: str):
    """Check/convert a scalar against its annotated type (int, float, bool, str, optional, list, dict)."""
    if value is None:
        return None
    origin, args = get_origin(t), get_args(t)
    if origin is not None and type(None) in args:  # X | None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], path) if len(inner) == 1 else value
    if t is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    if t is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    if t is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{path}: expected a number, got {value!r}")
    if t is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    if origin is list or t is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        return value
    if origin is dict or t is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return value
    return value


def _parse_value(text: str):
    """A command-line value: YAML scalars/lists/maps (3e-4, true, [1, 3], {a: 1}) or a plain string."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` overrides to a nested dict (lists of sections are indexed: data.domains.0.path=...)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. optim.lr=3e-4")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for i, part in enumerate(parts[:-1]):
            nxt = node[int(part)] if isinstance(node, list) and part.isdigit() else (
                node.setdefault(part, {}) if isinstance(node, dict) else None)
            if nxt is None or not isinstance(nxt, (dict, list)):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[: i + 1])} is not a section")
            node = nxt
        last = parts[-1]
        if isinstance(node, list):
            node[int(last)] = _parse_value(text)
        else:
            node[last] = _parse_value(text)
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults), apply dotted overrides, and validate it."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"--config {path}: no such file")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
    base = dataclasses.asdict(Config())
    merged = _deep_merge(base, data)
    merged = apply_overrides(merged, overrides or [])
    return _build(Config, merged, "")


def _deep_merge(base: dict, new: dict) -> dict:
    if not isinstance(new, dict):
        raise ConfigError(f"config: expected a mapping at the top level, got {type(new).__name__}")
    out = dict(base)
    for k, v in new.items():
        out[k] = _deep_merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) and k != "domain_weights" \
            and k != "backbone_options" else v
    return out


def config_from_dict(d: dict) -> Config:
    return _build(Config, d, "")

