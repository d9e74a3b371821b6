"""The optional first stage: a one-step starting point for the adversarial stage.

The paper's students start from one-step weights (DMD2, Hyper-SD); a user with only a multi-step
teacher has none, and the adversarial stage alone must then turn a multi-step UNet into a one-step
generator. This stage regresses the student's one-step x̂0 onto the teacher's x0 from the same
noise (the pairs the teacher cache already holds), in latent space. It runs for the first
`first_stage_steps` iterations of a run, in the same run folder, checkpointed like the rest; the
adversarial stage that follows is the paper's (adversarial loss only).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nitro_edge.training.student import student_sample


def regression_loss(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the student's and the teacher's x0 latents."""
    return F.mse_loss(fake.float(), real.float())


def regression_step(run, batch, k: int, gen: torch.Generator, stats: dict, accumulation: int) -> torch.Tensor:
    """One micro-batch: the student's x̂0 after k steps from the teacher's noise (the earlier steps
    without gradient, as in the adversarial stage), held to the teacher's x0 from that noise."""
    with run.acc.autocast():
        fake = student_sample(run.student, batch.noise, batch.cond, run.source.params, k, run.alphas, gen).float()
        loss = regression_loss(fake, batch.real)
    run.acc.backward(loss / accumulation)
    stats["loss_first_stage/mse"] = stats.get("loss_first_stage/mse", 0.0) + float(loss.detach()) / accumulation
    return loss
