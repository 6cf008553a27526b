"""Training configs: flat dataclasses read from JSON, YAML or TOML, checked before any work.

One dataclass per trainer, nanoGPT-style: every field is a documented knob with the paper's
default. :class:`TrainConfig` holds what every trainer shares (data, optimisation,
checkpoints, logging, distribution); :class:`VAETrainConfig` adds the VAE's losses. The DiT
trainer subclasses :class:`TrainConfig` the same way.

:func:`load_config` rejects unknown keys (naming them and the closest known one), values of
the wrong type and impossible sizes, so a typo fails at start instead of after an hour.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

C = TypeVar("C", bound="TrainConfig")


class ConfigError(ValueError):
    """A config file or override that cannot work; the message names the key."""


@dataclass
class TrainConfig:
    """Fields shared by every trainer. Sizes are in pixels and pixel frames."""

    # --- data
    anno_files: list[str] = field(default_factory=list)   # JSONL annotation files
    data_root: str = ""            # relative paths in the annotations are resolved against this
    width: int = 256               # target frame size (the first bucket when ``buckets`` is empty)
    height: int = 256
    buckets: list[list[int]] = field(default_factory=list)  # [[w, h], ...] aspect-ratio buckets
    num_frames: int = 17           # pixel frames per video sample: 1 + 8k
    fps: float = 24.0              # frames are sampled at this rate
    num_workers: int = 0           # DataLoader worker processes
    # --- optimisation
    batch_size: int = 4            # global batch (split over ranks)
    max_steps: int = 1000
    lr: float = 1e-4
    weight_decay: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # "constant" or "cosine" (after warm-up)
    grad_clip: float = 1.0         # 0 disables clipping
    mixed_precision: str = "no"    # "no" or "bf16" (autocast)
    gradient_checkpointing: bool = False
    ema_decay: float = 0.0         # 0 disables EMA
    max_nonfinite_steps: int = 10  # updates with a NaN/inf loss or gradient are skipped; stop after this many in a row
    seed: int = 42
    # --- run
    output_dir: str = "runs/train"
    log_every: int = 10
    save_every: int = 500
    keep_last: int = 3             # checkpoints kept on disk
    resume: str = "auto"           # "auto" (latest in output_dir), "none", or a checkpoint path
    tensorboard: bool = True       # used when tensorboard is installed
    strategy: str = "ddp"          # "ddp" or "fsdp" when WORLD_SIZE > 1
    device: str = ""               # "" (CUDA when available), "cpu" or "cuda"

    # multiples a trainer needs; subclasses tighten these
    size_multiple: typing.ClassVar[int] = 8
    frame_unit: typing.ClassVar[int] = 8

    def frame_buckets(self) -> list[tuple[int, int]]:
        """(width, height) of every bucket; the single (width, height) when none are given."""
        return [tuple(b) for b in self.buckets] or [(self.width, self.height)]

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first impossible value."""
        m, u = self.size_multiple, self.frame_unit
        for key in ("width", "height"):
            value = getattr(self, key)
            if value < m or value % m:
                raise ConfigError(f"{key}={value}: must be a positive multiple of {m}")
        for i, bucket in enumerate(self.buckets):
            if len(bucket) != 2 or any(not isinstance(v, int) or v < m or v % m for v in bucket):
                raise ConfigError(f"buckets[{i}]={bucket}: each bucket is [width, height], multiples of {m}")
        if self.num_frames < 1 or (self.num_frames - 1) % u:
            raise ConfigError(f"num_frames={self.num_frames}: must be 1 + {u}k (1, {1 + u}, {1 + 2 * u}, ...)")
        _positive(self, "batch_size", "max_steps", "log_every", "save_every", "keep_last", "max_nonfinite_steps")
        _positive(self, "fps", "lr")
        if self.num_workers < 0 or self.warmup_steps < 0 or self.grad_clip < 0 or self.weight_decay < 0:
            raise ConfigError("num_workers, warmup_steps, grad_clip and weight_decay must not be negative")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"betas={self.betas}: two numbers in [0, 1)")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay={self.ema_decay}: must be in [0, 1) (0 disables EMA)")
        _choice(self, "mixed_precision", ("no", "bf16"))
        _choice(self, "lr_schedule", ("constant", "cosine"))
        _choice(self, "strategy", ("ddp", "fsdp"))
        _choice(self, "device", ("", "cpu", "cuda"))
        if not self.output_dir:
            raise ConfigError("output_dir must not be empty")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class VAETrainConfig(TrainConfig):
    """The causal video VAE trainer; defaults follow the reference's stage-1 recipe."""

    vae_config: str = ""           # config.json of the architecture to train
    init_weights: str = ""         # optional checkpoint (folder or file) to start from
    pixel_loss: str = "l1"         # "l1" or "mse"
    pixel_weight: float = 1.0
    perceptual_weight: float = 1.0
    perceptual_net: str = "tiny"   # "vgg16" (with lpips_weights) or "tiny" (random, for tests)
    lpips_weights: str = ""        # local vgg_lpips.pth holding the VGG16 and LPIPS heads
    kl_weight: float = 1e-6
    sample_posterior: bool = True
    disc_start: int = 2000         # GAN losses are off before this step
    disc_weight: float = 0.5       # scales the adaptive generator weight
    disc_type: str = "2d"          # "2d" (per-frame PatchGAN) or "3d"
    disc_layers: int = 3
    disc_channels: int = 64
    lr_disc: float = 1e-4
    export_ema: bool = True        # export EMA weights when EMA is on

    def validate(self) -> None:
        super().validate()
        if not self.vae_config:
            raise ConfigError("vae_config: give the path of the VAE's config.json")
        _choice(self, "pixel_loss", ("l1", "mse"))
        _choice(self, "perceptual_net", ("tiny", "vgg16"))
        _choice(self, "disc_type", ("2d", "3d"))
        if self.perceptual_net == "vgg16" and not self.lpips_weights:
            raise ConfigError("lpips_weights: perceptual_net='vgg16' needs the local vgg_lpips.pth file")
        for key in ("pixel_weight", "perceptual_weight", "kl_weight", "disc_weight", "disc_start"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}={getattr(self, key)}: must not be negative")
        _positive(self, "disc_layers", "disc_channels", "lr_disc")
        smallest = min(min(b) for b in self.frame_buckets())
        if self.disc_weight > 0 and smallest < 3 * 2 ** self.disc_layers:
            raise ConfigError(f"disc_layers={self.disc_layers}: frames of {smallest} pixels are too small for the "
                              f"PatchGAN (needs >= {3 * 2 ** self.disc_layers}); lower disc_layers or disc_weight=0")


# --------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------

def _positive(cfg, *keys: str) -> None:
    for key in keys:
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"{key}={getattr(cfg, key)}: must be positive")


def _choice(cfg, key: str, choices: tuple[str, ...]) -> None:
    if getattr(cfg, key) not in choices:
        raise ConfigError(f"{key}={getattr(cfg, key)!r}: choose one of {list(choices)}")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A mapping from a .json, .yaml/.yml or .toml file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text()
    if path.suffix == ".json":
        data = json.loads(text)
    elif path.suffix in (".yaml", ".yml"):
        import yaml  # optional: only YAML configs need it

        data = yaml.safe_load(text)
    elif path.suffix == ".toml":
        data = tomllib.loads(text)
    else:
        raise ConfigError(f"config file {path}: use .json, .yaml/.yml or .toml")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return data


def _type_ok(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        (inner,) = typing.get_args(annotation)
        return isinstance(value, list) and all(_type_ok(v, inner) for v in value)
    return isinstance(value, annotation)


def config_from_dict(cls: type[C], data: dict[str, Any]) -> C:
    """Build and validate ``cls`` from a mapping; unknown keys and wrong types are errors."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown config key {key!r}{hint}; {cls.__name__} has no such field")
        if not _type_ok(value, hints[key]):
            raise ConfigError(f"config key {key!r}: {value!r} is not of type {hints[key]}")
    cfg = cls(**{k: (float(v) if hints[k] is float else v) for k, v in data.items()})
    cfg.validate()
    return cfg


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["lr=3e-4", "buckets=[[256,256]]", "output_dir=runs/x"]`` -> a mapping (JSON values, else strings)."""
    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {pair!r}: write key=value")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def load_config(cls: type[C], path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> C:
    """Defaults <- file <- overrides, then :meth:`TrainConfig.validate`."""
    data = read_config_file(path) if path else {}
    data.update(overrides or {})
    return config_from_dict(cls, data)
