"""Discriminator heads and the dynamic pool that holds them.

A head is a small stack of 4x4 stride-2 conv, GroupNorm, SiLU ending in a 1-channel logit map,
reading one backbone level. The pool holds `candidates` heads for every
(discriminator timestep, task, level) slot; each iteration trains one candidate per
(task, level) at one sampled timestep, and re-initialises a small fraction of all heads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nitro_edge.training.config import TASKS


class Head(nn.Module):
    """Conv4x4/2 -> GroupNorm -> SiLU, repeated down to about `min_size`, then a 1x1 conv to logits."""

    def __init__(self, in_channels: int, size: int, width: int = 64, min_size: int = 4, groups: int = 8):
        super().__init__()
        layers, ch = [], in_channels
        while True:
            layers += [
                nn.Conv2d(ch, width, 4, stride=2, padding=1),
                nn.GroupNorm(math.gcd(groups, width), width),
                nn.SiLU(),
            ]
            ch, size = width, max(1, size // 2)
            if size <= min_size:
                break
        layers.append(nn.Conv2d(ch, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return self.net(feature)

    def reset(self) -> None:
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()


@dataclass(frozen=True)
class Slot:
    timestep: int
    task: str
    level: int


class HeadPool(nn.Module):
    """All heads, indexed by slot; `select` and `refresh` draw from a generator shared by all ranks."""

    def __init__(
        self,
        channels: list[int],
        sizes: list[int],
        timesteps: tuple[int, ...],
        pool_size: int,
        width: int = 64,
        local_fraction: float = 0.5,
        tasks: tuple[str, ...] = TASKS,
    ):
        super().__init__()
        self.timesteps, self.levels, self.tasks = tuple(timesteps), len(channels), tuple(tasks)
        n_slots = len(timesteps) * len(self.tasks) * self.levels
        self.candidates = max(1, pool_size // n_slots)
        self.slots: list[Slot] = []
        heads = []
        for t in self.timesteps:
            for task in self.tasks:
                for level, (ch, size) in enumerate(zip(channels, sizes)):
                    local_size = max(1, int(size * local_fraction)) if task != "global_cond" else size
                    for _ in range(self.candidates):
                        self.slots.append(Slot(t, task, level))
                        heads.append(Head(ch, local_size, width))
        self.heads = nn.ModuleList(heads)
        # Each head's parameters, listed once (a reset re-initialises them in place, so they stay valid).
        self.head_parameters = [list(h.parameters()) for h in heads]

    def __len__(self) -> int:
        return len(self.heads)

    def index(self, timestep: int, task: str, level: int, candidate: int) -> int:
        per_t = len(self.tasks) * self.levels * self.candidates
        return (
            self.timesteps.index(timestep) * per_t
            + self.tasks.index(task) * self.levels * self.candidates
            + level * self.candidates
            + candidate
        )

    def select_all(
        self, generator: torch.Generator, batch: int, per_slot: int = 1
    ) -> tuple[list[int], dict[int, dict[str, list[int]]]]:
        """A discriminator timestep per sample (balanced over the timesteps, random order) and, for
        each timestep present, `per_slot` distinct candidates per (task, level):
        {t*: {task: [head indices, level by level]}} (a head's level is self.slots[i].level)."""
        order = torch.randperm(len(self.timesteps), generator=generator).tolist()
        per_sample = [self.timesteps[order[i % len(order)]] for i in range(batch)]
        per_slot = min(per_slot, self.candidates)
        picks = {}
        for t in self.timesteps:
            if per_slot == 1:
                cands = {
                    task: [[c] for c in torch.randint(self.candidates, (self.levels,), generator=generator).tolist()]
                    for task in self.tasks
                }
            else:
                cands = {
                    task: [
                        torch.randperm(self.candidates, generator=generator)[:per_slot].tolist()
                        for _ in range(self.levels)
                    ]
                    for task in self.tasks
                }
            if t in per_sample:
                picks[t] = {
                    task: [self.index(t, task, level, c) for level, cs in enumerate(cands[task]) for c in cs]
                    for task in self.tasks
                }
        return per_sample, picks

    def refresh(self, fraction: float, generator: torch.Generator) -> list[int]:
        """Re-initialise round(fraction * len) random heads (at least one if fraction > 0)."""
        if fraction <= 0:
            return []
        count = max(1, round(fraction * len(self)))
        chosen = torch.randperm(len(self), generator=generator)[:count].tolist()
        for i in chosen:
            self.heads[i].reset()
        return chosen


def run_heads(pool: HeadPool, jobs: list[tuple[torch.Tensor, list[int]]]) -> list[torch.Tensor]:
    """Run many heads as one stack of convolutions: the same maths as calling each head, in a few
    calls instead of one per head (SDXL's pool is 480 heads; a Python loop of modules is slow).

    `jobs` is a list of (input map (b_j, C, H, W), ids of the heads that read it); every head of
    every job has the same structure and every input the same (C, H, W). Returns, per job, the
    logits (b_j, len(ids), h, w), head by head in the order of `ids`.

    The heads' weights are concatenated (so gradients reach each head's own parameters and its
    optimiser state stays its own): the first convolution reads each job's input as one group of a
    grouped convolution, the later ones and the 1x1 output are grouped per head, and GroupNorm over
    (heads x groups) groups is each head's own GroupNorm. Jobs with fewer samples are padded with
    zero rows, which change nothing: every operation is per sample.
    """
    if not jobs:
        return []
    per_job = len(jobs[0][1])
    if any(len(ids) != per_job for _, ids in jobs):  # a grouped convolution needs equal groups
        by_count: dict[int, list[int]] = {}
        for j, (_, ids) in enumerate(jobs):
            by_count.setdefault(len(ids), []).append(j)
        out: list = [None] * len(jobs)
        for members in by_count.values():
            for j, y in zip(members, run_heads(pool, [jobs[j] for j in members])):
                out[j] = y
        return out
    rows = max(x.shape[0] for x, _ in jobs)
    x = torch.cat([F.pad(x, (0, 0, 0, 0, 0, 0, 0, rows - x.shape[0])) for x, _ in jobs], dim=1)
    heads = [pool.heads[i] for _, ids in jobs for i in ids]
    layers = [list(h.net) for h in heads]
    n, groups = len(heads), len(jobs)
    for depth, first in enumerate(layers[0]):
        if isinstance(first, nn.Conv2d):
            weight = torch.cat([h[depth].weight for h in layers])
            bias = torch.cat([h[depth].bias for h in layers])
            x = F.conv2d(x, weight, bias, first.stride, first.padding, groups=groups if depth == 0 else n)
        elif isinstance(first, nn.GroupNorm):
            weight = torch.cat([h[depth].weight for h in layers])
            bias = torch.cat([h[depth].bias for h in layers])
            x = F.group_norm(x, n * first.num_groups, weight, bias, first.eps)
        else:
            x = F.silu(x)
    return [x[: job.shape[0], j * per_job : (j + 1) * per_job] for j, (job, _) in enumerate(jobs)]


def reset_optimizer_state(optimizer: torch.optim.Optimizer, module: nn.Module) -> None:
    """Forget the optimiser's moments for `module`'s parameters (Adam re-creates them at zero)."""
    for p in module.parameters():
        optimizer.state.pop(p, None)
