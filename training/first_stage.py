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
    """One micro-batch: the student's x̂0 held to the teacher's x0. One step: from the teacher's
    noise. k steps: the last of k steps, from the teacher's x0 re-noised to that step's timestep
    (as the sampler re-noises the student's x̂0 between steps). Not from the student's own earlier
    steps: their fresh noise makes the k-step output no function of the starting noise, and
    regressing it onto the teacher's x0 from that noise asks for an average."""
    with run.acc.autocast():
        if k == 1:
            fake = student_sample(run.student, batch.noise, batch.cond, run.source.params, 1, run.alphas, gen)
        else:
            params = run.source.params
            a = run.alphas[int(params.lcm_timesteps(k)[-1])]
            eps = torch.randn(batch.noise.shape, generator=gen).to(batch.noise.device)
            x = a.sqrt() * batch.real + (1 - a).sqrt() * eps
            t = torch.full((len(x),), int(params.generator_timesteps(k)[-1]), dtype=torch.int64, device=x.device)
            extra = {key: batch.cond[key] for key in ("text_embeds", "time_ids") if key in batch.cond}
            fake = run.student(x, t, batch.cond["encoder_hidden_states"], **extra)[0]
        loss = regression_loss(fake.float(), batch.real)
    run.acc.backward(loss / accumulation)
    stats["loss_first_stage/mse"] = stats.get("loss_first_stage/mse", 0.0) + float(loss.detach()) / accumulation
    return loss
