"""Adversarial losses on logit maps: hinge or non-saturating, and an approximate R1 penalty."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nitro_edge.training.config import LOSSES  # noqa: F401  (the kinds these functions take)


def discriminator_loss(real: torch.Tensor, fake: torch.Tensor, kind: str) -> torch.Tensor:
    """Pushes real logits up and fake logits down."""
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    return F.softplus(-real).mean() + F.softplus(fake).mean()


def generator_loss(fake: torch.Tensor, kind: str) -> torch.Tensor:
    """Pushes the logits of generated samples up."""
    if kind == "hinge":
        return -fake.mean()
    return F.softplus(-fake).mean()


def approximate_r1(logits_real: torch.Tensor, logits_perturbed: torch.Tensor) -> torch.Tensor:
    """Finite-difference stand-in for R1: how much logits move when real input is slightly noised."""
    return (logits_real - logits_perturbed).pow(2).mean()
