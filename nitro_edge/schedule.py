"""The noise schedule and the timestep-shifted LCM grid (numpy only; see docs/architecture.md).

NitroFusion samples with an LCM scheduler over the grid of `original_inference_steps` (4) whose
timesteps the generator sees shifted: t' = floor(t * shift / num_train_timesteps). Re-noising toward
the next step uses the unshifted next timestep.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from nitro_edge.errors import InputError

MAX_STEPS = 4
SIGMA_DATA = 0.5  # LCM's boundary-condition constant


@dataclass(frozen=True)
class NoiseSchedule:
    """The training noise schedule of a diffusion model, as diffusers' scheduler config gives it."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    prediction_type: str = "epsilon"

    def __post_init__(self) -> None:
        if self.beta_schedule not in ("scaled_linear", "linear"):
            raise InputError(f"beta_schedule must be 'scaled_linear' or 'linear', got {self.beta_schedule!r}")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise InputError(f"prediction_type must be 'epsilon' or 'v_prediction', got {self.prediction_type!r}")

    def alphas_cumprod(self) -> np.ndarray:
        """ᾱ_t for t = 0 .. num_train_timesteps-1, float32 like diffusers computes it."""
        n = self.num_train_timesteps
        if self.beta_schedule == "scaled_linear":
            betas = np.linspace(self.beta_start**0.5, self.beta_end**0.5, n, dtype=np.float32) ** 2
        else:
            betas = np.linspace(self.beta_start, self.beta_end, n, dtype=np.float32)
        return np.cumprod(1.0 - betas, dtype=np.float32)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SamplerParams:
    """What the sampler needs besides the components: schedule, shift and LCM grid size."""

    schedule: NoiseSchedule
    shift: int = 1000
    original_inference_steps: int = 4
    timestep_scaling: float = 10.0

    def __post_init__(self) -> None:
        n = self.schedule.num_train_timesteps
        if not 1 <= self.shift <= n:
            raise InputError(f"shift must be between 1 and {n}, got {self.shift}")
        if not 1 <= self.original_inference_steps <= n:
            raise InputError(f"original_inference_steps must be between 1 and {n}, got {self.original_inference_steps}")

    def lcm_timesteps(self, steps: int) -> np.ndarray:
        """The unshifted LCM timesteps for `steps` steps (999 first), as diffusers' LCMScheduler."""
        check_steps(steps, self.original_inference_steps)
        n = self.schedule.num_train_timesteps
        c = n // self.original_inference_steps
        origin = np.arange(1, self.original_inference_steps + 1) * c - 1
        origin = origin[::-1]
        index = np.floor(np.linspace(0, len(origin), num=steps, endpoint=False)).astype(np.int64)
        return origin[index].astype(np.int64)

    def generator_timesteps(self, steps: int) -> np.ndarray:
        """The shifted timesteps the generator sees: floor(t * shift / num_train_timesteps)."""
        t = self.lcm_timesteps(steps)
        return (t * self.shift) // self.schedule.num_train_timesteps

    def boundary_scalings(self, t_shifted):
        """LCM's (c_skip, c_out) at the shifted timestep(s), float32 (scalars for an int, arrays for
        an array); about (0, 1) on the grid used here. The generator folds them into its graph."""
        scaled = np.asarray(t_shifted, dtype=np.float32) * np.float32(self.timestep_scaling)
        sigma2 = np.float32(SIGMA_DATA**2)
        c_skip = sigma2 / (scaled**2 + sigma2)
        c_out = scaled / np.sqrt(scaled**2 + sigma2)
        return c_skip.astype(np.float32), c_out.astype(np.float32)

    def to_dict(self) -> dict:
        return {
            "shift": self.shift,
            "original_inference_steps": self.original_inference_steps,
            "timestep_scaling": self.timestep_scaling,
            "noise_schedule": self.schedule.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> SamplerParams:
        return cls(
            schedule=NoiseSchedule(**data["noise_schedule"]),
            shift=int(data["shift"]),
            original_inference_steps=int(data["original_inference_steps"]),
            timestep_scaling=float(data["timestep_scaling"]),
        )


def check_steps(steps: int, limit: int = MAX_STEPS) -> None:
    """Raise InputError unless 1 <= steps <= min(limit, 4)."""
    top = min(limit, MAX_STEPS)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= top:
        raise InputError(f"steps must be an integer from 1 to {top}, got {steps!r}")
