"""Adversarial losses on logit maps: hinge or non-saturating, and an approximate R1 penalty.

Each takes `dims`, the dimensions to average over: all of them by default (one number), or
(0, 2, 3) for logit maps that hold one head per channel (one number per head, as the loop uses)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nitro_edge.training.config import LOSSES  # noqa: F401  (the kinds these functions take)

PER_HEAD = (0, 2, 3)  # a (samples, heads, h, w) logit map averaged to one number per head


def _mean(x: torch.Tensor, dims) -> torch.Tensor:
    return x.mean() if dims is None else x.mean(dims)


def discriminator_loss(real: torch.Tensor, fake: torch.Tensor, kind: str, dims=None) -> torch.Tensor:
    """Pushes real logits up and fake logits down."""
    if kind == "hinge":
        return _mean(F.relu(1 - real), dims) + _mean(F.relu(1 + fake), dims)
    return _mean(F.softplus(-real), dims) + _mean(F.softplus(fake), dims)


def generator_loss(fake: torch.Tensor, kind: str, dims=None) -> torch.Tensor:
    """Pushes the logits of generated samples up."""
    if kind == "hinge":
        return -_mean(fake, dims)
    return _mean(F.softplus(-fake), dims)


def approximate_r1(logits_real: torch.Tensor, logits_perturbed: torch.Tensor, dims=None) -> torch.Tensor:
    """Finite-difference stand-in for R1: how much logits move when real input is slightly noised."""
    return _mean((logits_real - logits_perturbed).pow(2), dims)
