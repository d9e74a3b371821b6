"""Training configuration: one typed dataclass, from YAML plus `key=value` overrides, checked
when it is built (before anything loads). Needs no torch: `nitro-edge train` can say what is wrong
with a config, or that torch is missing, in one line."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

from nitro_edge._lazy import require
from nitro_edge.errors import InputError

MIXED_PRECISION = ("no", "fp16", "bf16")
# The auto defaults (TrainConfig.resolve); docs/training.md gives the runs that chose them.
FIRST_STAGE_FRACTION = 0.75  # of max_steps spent on the first stage when the student starts from the teacher
FIRST_STAGE_LR_AT_64 = 3e-4  # Adam learning rate for a UNet whose widest block has 64 channels; scaled by 64/width
ADVERSARIAL_LR_RATIO = 1 / 60  # the student's adversarial-stage learning rate, relative to the first stage's
MAX_HEAD_WIDTH = 64  # the auto head width: half the UNet's widest block, at most this
# Bottom-up refinement in the adversarial stage (refine_schedule): k-step training opens at these
# shares of the adversarial steps, for k = 2, 3, 4. Not the default: measured, it cost the one-step
# student more than it gave the 2-4-step modes (docs/training.md, "Bottom-up refinement").
REFINE_AT = (0.0, 0.25, 0.5)
EMA_FRACTION = 0.05  # the EMA's time constant, as a fraction of max_steps (at least 10 steps)
TASKS = ("global_cond", "local_cond", "local_uncond")  # the discriminator heads' three jobs
LOSSES = ("hinge", "non_saturating")


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
    # First stage (training/first_stage.py): regression of the student's x̂0 onto the teacher's x0
    first_stage_steps: int = -1  # iterations at the start of the run; -1: auto (see resolve()); 0: none
    lr_first_stage: float = 0.0  # 0: auto, from the teacher UNet's width
    # Student
    shift: int = 0  # UNet sees t * shift / 1000; 0: auto (1000: the student starts from the teacher)
    # The step at which k-step training begins, k = 1, 2, ...; []: auto, [0] (one step throughout).
    refine_starts: list[int] = field(default_factory=list)
    # Once k > 1 is open, the share of iterations that still train one step (the rest: uniform 1..k).
    one_step_share: float = 0.0
    lr_student: float = 0.0  # adversarial stage; 0: auto, from lr_first_stage
    ema_decay: float = -1.0  # -1: auto, from max_steps
    # Discriminator
    disc_timesteps: list[int] = field(default_factory=lambda: [10, 250, 500, 750])
    pool_size: int = 480
    head_width: int = 0  # 0: auto, half the teacher UNet's widest block, between 8 and 64
    heads_per_slot: int = 0  # candidates trained per (t*, task, level) each step; 0: all of them
    refresh_rate: float = 0.01
    local_fraction: float = 0.5  # side of a local crop, as a fraction of each feature map
    tasks: list[str] = field(default_factory=lambda: list(TASKS))  # head tasks in the pool (ablations drop some)
    loss: str = "hinge"
    r1_weight: float = 0.0
    r1_sigma: float = 0.01
    lr_heads: float = 2e-3
    adam_betas: list[float] = field(default_factory=lambda: [0.0, 0.99])
    weight_decay: float = 0.0
    # Systems
    mixed_precision: str = "no"
    # True: the heads of one level and kind as one grouped call, real and fake (and both
    # conditionings) through the backbone together; False: one call per head and per input, the
    # reference the batched path is tested against (benchmarks/adversarial_step.py times both).
    batched_discriminator: bool = True
    gradient_checkpointing: bool = False
    tf32: bool = True
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    sample_every: int = 100
    log_every: int = 10
    diagnostics_window: int = 50  # adversarial steps the accuracy/loss means and the alarms look back over
    sample_prompts: list[str] = field(
        default_factory=lambda: ["a red circle at the top left", "a blue square in the centre"]
    )

    def __post_init__(self) -> None:
        self._check_types()
        self._check_values()

    def validate(self, need_paths: bool = True) -> TrainConfig:
        """Check the values again (fields may have been changed since) and, with `need_paths`,
        that the teacher, prompts and output are given and the first two exist."""
        self._check_types()
        self._check_values()
        if need_paths:
            for key in ("teacher", "prompts", "output"):
                if not getattr(self, key):
                    raise InputError(f"{key} is required (--{key} or `{key}:` in the config)")
            teacher = Path(self.teacher)
            if not (teacher.is_dir() or (teacher.is_file() and teacher.suffix == ".safetensors")):
                raise InputError(
                    f"teacher must be a diffusers pipeline folder or a single-file .safetensors checkpoint, "
                    f"got {self.teacher!r}"
                )
            if not Path(self.prompts).exists():
                raise InputError(f"prompts must be a file or folder of prompts, got {self.prompts!r} (not found)")
        return self

    def _check_types(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not _is_instance(value, _HINTS[f.name]):
                raise InputError(f"{f.name} must be {_type_name(_HINTS[f.name])}, got {value!r}")

    def _check_values(self) -> None:
        """Raise InputError naming the first impossible value or combination."""

        def bad(msg: str) -> None:
            raise InputError(msg)

        for key in (
            "max_steps",
            "batch_size",
            "gradient_accumulation",
            "teacher_steps",
            "pool_size",
            "checkpoint_every",
            "sample_every",
            "log_every",
            "keep_checkpoints",
        ):
            if getattr(self, key) < 1:
                bad(f"{key} must be at least 1, got {getattr(self, key)}")
        if not 0 <= self.shift <= 1000:
            bad(f"shift must be between 1 and 1000 (0: auto), got {self.shift}")
        if self.student_unet and not self.shift:
            bad(
                "shift is required with student_unet: the timestep that UNet takes pure noise at "
                "(NitroSD-Realism 250, NitroSD-Vibrant 500, SD-Turbo and SDXL-Turbo 1000)"
            )
        if self.head_width < 0:
            bad(f"head_width must be at least 1 (0: auto), got {self.head_width}")
        if self.heads_per_slot < 0:
            bad(f"heads_per_slot must be at least 1 (0: every candidate), got {self.heads_per_slot}")
        starts = self.refine_starts
        if starts and (starts[0] != 0 or sorted(starts) != starts or len(starts) > 4):
            bad(f"refine_starts must start at 0, increase, and have at most 4 entries ([]: auto), got {starts}")
        if not self.disc_timesteps or not all(0 <= t < 1000 for t in self.disc_timesteps):
            bad(f"disc_timesteps must be timesteps in [0, 1000), got {self.disc_timesteps}")
        if not self.tasks or any(t not in TASKS for t in self.tasks) or len(set(self.tasks)) != len(self.tasks):
            bad(f"tasks must be distinct names from {TASKS}, got {self.tasks}")
        if self.pool_size < len(self.disc_timesteps) * len(self.tasks):
            bad(
                f"pool_size {self.pool_size} is too small for {len(self.disc_timesteps)} timesteps x {len(self.tasks)} tasks"
            )
        if not 0 <= self.refresh_rate < 1:
            bad(f"refresh_rate must be in [0, 1), got {self.refresh_rate}")
        if not 0 <= self.one_step_share <= 1:
            bad(f"one_step_share must be in [0, 1], got {self.one_step_share}")
        if not 0 < self.local_fraction <= 1:
            bad(f"local_fraction must be in (0, 1], got {self.local_fraction}")
        if self.loss not in LOSSES:
            bad(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            bad(f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            bad(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas}")
        if not -1 <= self.first_stage_steps <= self.max_steps:
            bad(
                f"first_stage_steps must be between 0 and max_steps ({self.max_steps}) (-1: auto), "
                f"got {self.first_stage_steps}"
            )
        if self.first_stage_steps > 0 and self.student_unet:
            bad("first_stage_steps must be 0 with student_unet: a given one-step UNet needs no first stage")
        if self.diagnostics_window < 1:
            bad(f"diagnostics_window must be at least 1, got {self.diagnostics_window}")
        if not self.lr_heads > 0:
            bad(f"lr_heads must be positive, got {self.lr_heads}")
        for key in ("lr_student", "lr_first_stage"):
            if not getattr(self, key) >= 0:
                bad(f"{key} must be positive (0: auto), got {getattr(self, key)}")
        if not (self.ema_decay == -1 or 0 <= self.ema_decay < 1):
            bad(f"ema_decay must be in [0, 1) (-1: auto), got {self.ema_decay}")
        if self.teacher_guidance < 0 or self.r1_weight < 0:
            bad("teacher_guidance and r1_weight must be non-negative")
        # The multiple the resolution must have depends on the teacher (VAE and UNet downscale):
        # checked when its configs are read (nitro_edge.models.loading).
        if self.resolution < 0:
            bad(f"resolution must be 0 (the teacher's) or a positive size, got {self.resolution}")

    def resolve(self, unet_config) -> TrainConfig:
        """The config with every auto value made concrete for this teacher (its UNet's config) and
        budget; what a run records in its config.json. The rules and the measurements behind them
        are in docs/training.md ("Defaults")."""
        width = int(unet_config.block_out_channels[-1])
        first = self.first_stage_steps
        if first == -1:
            first = 0 if self.student_unet else round(FIRST_STAGE_FRACTION * self.max_steps)
        lr_first = self.lr_first_stage or FIRST_STAGE_LR_AT_64 * 64 / width
        # One step by default: refine_schedule's bottom-up refinement cost the 1-step student (docs).
        starts = self.refine_starts or [0]
        decay = self.ema_decay if self.ema_decay != -1 else 1 - 1 / max(10.0, EMA_FRACTION * self.max_steps)
        return dataclasses.replace(
            self,
            first_stage_steps=first,
            lr_first_stage=lr_first,
            lr_student=self.lr_student or lr_first * ADVERSARIAL_LR_RATIO,
            shift=self.shift or 1000,
            refine_starts=starts,
            ema_decay=round(decay, 6),
            head_width=self.head_width or min(MAX_HEAD_WIDTH, max(8, width // 2)),
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def refine_schedule(first_stage_steps: int, max_steps: int) -> list[int]:
    """Bottom-up refinement as `refine_starts`: one step through the first stage, then 2, 3 and 4
    steps opened one after another in the adversarial stage, which compares distributions and
    needs no pairing (the recipe's "bottom-up refinement" row; not the auto default)."""
    adversarial = max_steps - first_stage_steps
    if adversarial <= 0:
        return [0]
    return [0, *(first_stage_steps + round(share * adversarial) for share in REFINE_AT)]


def k_schedule(refine_starts: list[int], max_steps: int) -> list[dict]:
    """What `steps_for` draws, phase by phase: [{"from_step", "to_step", "k"}] (k drawn from 1..k_max
    within a phase); what `--dry-run` prints."""
    phases = []
    for k, start in enumerate(refine_starts, 1):
        end = refine_starts[k] if k < len(refine_starts) else max_steps
        if end > start and start < max_steps:
            phases.append({"from_step": start, "to_step": min(end, max_steps), "k": "1" if k == 1 else f"1-{k}"})
    return phases


_HINTS: dict = {}  # field name -> type, filled once the class exists (below)


def _is_instance(value, kind) -> bool:
    origin = typing.get_origin(kind)
    if origin is list:
        (item,) = typing.get_args(kind)
        return isinstance(value, list) and all(_is_instance(v, item) for v in value)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _type_name(kind) -> str:
    """int, float, str, bool, list[int], ...: as the field is declared."""
    return kind.__name__ if isinstance(kind, type) else str(kind)


def _coerce(key: str, value):
    """`value` (from YAML, a CLI option or a `--set` string) as the field's type, or InputError."""
    kind, given = _HINTS[key], value
    yaml = require("yaml", "train")
    try:
        if isinstance(value, str) and kind not in (str, float):  # float("1e-5") works; YAML 1.1 reads it as text
            value = yaml.safe_load(value)
        return _convert(value, kind)
    except (TypeError, ValueError, yaml.YAMLError):
        raise InputError(f"{key} must be {_type_name(kind)}, got {given!r}") from None


def _convert(value, kind):
    if typing.get_origin(kind) is list:
        if not isinstance(value, list):
            raise ValueError(value)
        (item,) = typing.get_args(kind)
        return [_convert(v, item) for v in value]
    if kind is bool:
        if isinstance(value, int) and value in (0, 1):  # true/false/yes/no arrive as bool from YAML
            return bool(value)
        raise ValueError(value)
    if kind is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()) or isinstance(value, str):
            raise ValueError(value)
        return int(value)
    if kind is float:
        if isinstance(value, bool):
            raise ValueError(value)
        return float(value)
    if kind is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ValueError(value)
        return str(value)
    return kind(value)


def load_config(
    path: str | Path | None = None, overrides: dict | None = None, sets: list[str] | None = None
) -> TrainConfig:
    """A TrainConfig from an optional YAML file, then `overrides` (CLI options), then `--set k=v`."""
    data: dict = {}
    if path:
        yaml = require("yaml", "train")
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


_HINTS.update(typing.get_type_hints(TrainConfig))
