"""The student's side of an iteration: k-step sampling with the shared x0 step, noising to the
discriminator's timestep, and the local crops."""

from __future__ import annotations

import torch

from nitro_edge.schedule import SamplerParams


def steps_for(step: int, refine_starts: list[int], generator: torch.Generator, one_step_share: float = 0.0) -> int:
    """Bottom-up refinement: once k-step training has started, draw k' from 1..k: one step with
    probability `one_step_share`, else uniformly (0: uniform over 1..k)."""
    k = sum(1 for s in refine_starts if step >= s)
    u, pick = torch.rand(1, generator=generator), torch.randint(1, k + 1, (1,), generator=generator)
    return 1 if k > 1 and float(u) < one_step_share else int(pick)


def student_sample(
    student,
    noise: torch.Tensor,
    cond: dict,
    params: SamplerParams,
    k: int,
    alphas: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """x̂0 after k steps; gradients flow through the last step only (the earlier ones are inputs)."""
    gen_t = params.generator_timesteps(k)
    lcm_t = params.lcm_timesteps(k)
    x = noise
    batch = noise.shape[0]
    extra = {k_: cond[k_] for k_ in ("text_embeds", "time_ids") if k_ in cond}
    for i, t in enumerate(gen_t):
        timestep = torch.full((batch,), int(t), dtype=torch.int64, device=noise.device)
        if i + 1 < k:
            with torch.no_grad():
                denoised = student(x, timestep, cond["encoder_hidden_states"], **extra)[0]
                a = alphas[int(lcm_t[i + 1])]
                eps = torch.randn(x.shape, generator=generator).to(x.device)
                x = a.sqrt() * denoised + (1 - a).sqrt() * eps
        else:
            return student(x, timestep, cond["encoder_hidden_states"], **extra)[0]
    raise AssertionError("unreachable: k >= 1")


def add_noise(x0: torch.Tensor, eps: torch.Tensor, t, alphas: torch.Tensor) -> torch.Tensor:
    """Noise x0 to timestep t: an int, or a tensor with one timestep per sample."""
    a = alphas[t]
    if a.dim() > 0:
        a = a.view(-1, *([1] * (x0.dim() - 1)))
    return a.sqrt() * x0 + (1 - a).sqrt() * eps


def crop_window(fraction: float, generator: torch.Generator) -> tuple[float, float]:
    """Top-left corner of a local crop, as fractions of the map, shared by every level."""
    u = torch.rand(2, generator=generator) * (1 - fraction)
    return float(u[0]), float(u[1])


def crop(feature: torch.Tensor, fraction: float, corner: tuple[float, float]) -> torch.Tensor:
    h, w = feature.shape[-2:]
    ch, cw = max(1, int(h * fraction)), max(1, int(w * fraction))
    top, left = int(corner[0] * h), int(corner[1] * w)
    return feature[..., top : top + ch, left : left + cw]
