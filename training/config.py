"""Training configuration: one typed dataclass, from YAML plus `key=value` overrides, checked
before anything loads."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

from nitro_edge.errors import InputError
from nitro_edge.training.heads import TASKS
from nitro_edge.training.losses import LOSSES

MIXED_PRECISION = ("no", "fp16", "bf16")


@dataclass
class TrainConfig:
    """Everything a run needs. Defaults follow docs/training.md (paper values where published)."""

    teacher: str = ""  # diffusers SD1.5 / SD2.1 / SDXL pipeline folder (frozen)
    prompts: str = ""  # .txt (one per line), folder of .txt, .jsonl or .parquet with a `prompt` column
    output: str = ""  # run folder: checkpoints/, logs/, samples/, student/
    student_unet: str = ""  # optional UNet .safetensors to start from; default: the teacher's UNet
    max_steps: int = 1000
    batch_size: int = 1  # per process
    gradient_accumulation: int = 1
    resolution: int = 0  # 0: the teacher's native size
    seed: int = 0
    # Teacher sampling ("real" samples)
    teacher_steps: int = 4
    teacher_guidance: float = 0.0  # > 1 enables classifier-free guidance
    teacher_scheduler: str = ""  # diffusers scheduler class; default: the teacher folder's own
    teacher_cache: str = ""  # folder of precomputed shards (nitro-edge train --precompute), optional
    # Student
    shift: int = 250  # UNet sees t * shift / 1000
    refine_starts: list = field(default_factory=lambda: [0])  # step at which k-step training begins, k = 1..
    lr_student: float = 1e-5
    ema_decay: float = 0.999
    # Discriminator
    disc_timesteps: list = field(default_factory=lambda: [10, 250, 500, 750])
    pool_size: int = 480
    head_width: int = 64
    refresh_rate: float = 0.01
    local_fraction: float = 0.5  # side of a local crop, as a fraction of each feature map
    tasks: list = field(default_factory=lambda: list(TASKS))  # head tasks in the pool (ablations drop some)
    loss: str = "hinge"
    r1_weight: float = 0.0
    r1_sigma: float = 0.01
    lr_heads: float = 1e-4
    adam_betas: list = field(default_factory=lambda: [0.0, 0.99])
    weight_decay: float = 0.0
    # Systems
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    tf32: bool = True
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    sample_every: int = 100
    log_every: int = 10
    sample_prompts: list = field(default_factory=lambda: ["a red circle at the top left", "a blue square in the centre"])

    def validate(self, need_paths: bool = True) -> "TrainConfig":
        """Raise InputError naming the first impossible value or combination."""
        def bad(msg: str) -> None:
            raise InputError(msg)

        if need_paths:
            for key in ("teacher", "prompts", "output"):
                if not getattr(self, key):
                    bad(f"{key} is required (--{key} or `{key}:` in the config)")
            if not Path(self.teacher).is_dir():
                bad(f"teacher must be a diffusers pipeline folder, got {self.teacher!r} (not a folder)")
            if not Path(self.prompts).exists():
                bad(f"prompts must be a file or folder of prompts, got {self.prompts!r} (not found)")
        for key in ("max_steps", "batch_size", "gradient_accumulation", "teacher_steps", "pool_size",
                    "head_width", "checkpoint_every", "sample_every", "log_every", "keep_checkpoints"):
            if getattr(self, key) < 1:
                bad(f"{key} must be at least 1, got {getattr(self, key)}")
        if not 1 <= self.shift <= 1000:
            bad(f"shift must be between 1 and 1000, got {self.shift}")
        starts = self.refine_starts
        if not starts or starts[0] != 0 or sorted(starts) != starts or len(starts) > 4:
            bad(f"refine_starts must start at 0, increase, and have at most 4 entries, got {starts}")
        if not self.disc_timesteps or not all(0 <= t < 1000 for t in self.disc_timesteps):
            bad(f"disc_timesteps must be timesteps in [0, 1000), got {self.disc_timesteps}")
        if not self.tasks or any(t not in TASKS for t in self.tasks) or len(set(self.tasks)) != len(self.tasks):
            bad(f"tasks must be distinct names from {TASKS}, got {self.tasks}")
        if self.pool_size < len(self.disc_timesteps) * len(self.tasks):
            bad(f"pool_size {self.pool_size} is too small for {len(self.disc_timesteps)} timesteps x {len(self.tasks)} tasks")
        if not 0 <= self.refresh_rate < 1:
            bad(f"refresh_rate must be in [0, 1), got {self.refresh_rate}")
        if not 0 < self.local_fraction <= 1:
            bad(f"local_fraction must be in (0, 1], got {self.local_fraction}")
        if self.loss not in LOSSES:
            bad(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            bad(f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            bad(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas}")
        for key in ("lr_student", "lr_heads"):
            if not getattr(self, key) > 0:
                bad(f"{key} must be positive, got {getattr(self, key)}")
        if not 0 <= self.ema_decay < 1:
            bad(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.teacher_guidance < 0 or self.r1_weight < 0:
            bad("teacher_guidance and r1_weight must be non-negative")
        if self.resolution and self.resolution % 64:
            bad(f"resolution must be a multiple of 64 (or 0 for the teacher's), got {self.resolution}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_HINTS = typing.get_type_hints(TrainConfig)


def _coerce(key: str, value):
    kind = _HINTS[key]
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if kind is list:
            if isinstance(value, str):
                import yaml

                value = yaml.safe_load(value)
            if not isinstance(value, list):
                raise ValueError(value)
            return value
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return kind(value)
    except (TypeError, ValueError):
        raise InputError(f"{key} must be {kind.__name__}, got {value!r}") from None


def load_config(path: str | Path | None = None, overrides: dict | None = None,
                sets: list[str] | None = None) -> TrainConfig:
    """A TrainConfig from an optional YAML file, then `overrides` (CLI options), then `--set k=v`."""
    data: dict = {}
    if path:
        import yaml

        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise InputError(f"cannot read config {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise InputError(f"config {path} must be a mapping of keys to values")
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    for item in sets or []:
        if "=" not in item:
            raise InputError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        data[key.strip()] = value
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(f"unknown config keys {unknown}; known keys: {sorted(known)}")
    return TrainConfig(**{k: _coerce(k, v) for k, v in data.items()})
