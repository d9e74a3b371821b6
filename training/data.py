"""Prompts: read once, then addressed by (step, rank) so a resumed run draws exactly what the
uninterrupted run would have drawn; no iterator state to save."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nitro_edge._lazy import require
from nitro_edge.errors import InputError


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a .txt file (one per line), a folder of .txt files, .jsonl or .parquet (`prompt` column)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise InputError(f"prompt folder {path} has no .txt files")
        prompts = [p for f in files for p in _lines(f)]
    elif path.suffix == ".txt":
        prompts = _lines(path)
    elif path.suffix == ".jsonl":
        prompts = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    prompts.append(str(json.loads(line)["prompt"]))
                except (ValueError, KeyError, TypeError):
                    raise InputError(f"{path}:{n}: expected a JSON object with a 'prompt' field") from None
    elif path.suffix == ".parquet":
        pq = require("pyarrow.parquet", "train")
        table = pq.read_table(path, columns=["prompt"])
        prompts = [str(p) for p in table.column("prompt").to_pylist()]
    else:
        raise InputError(f"prompts must be .txt, .jsonl, .parquet or a folder of .txt, got {path}")
    prompts = [p.strip() for p in prompts if p and p.strip()]
    if not prompts:
        raise InputError(f"no prompts found in {path}")
    return prompts


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()]


class PromptSampler:
    """The batch for a given step and rank: a fresh seeded permutation of all prompts per epoch."""

    def __init__(self, prompts: list[str], seed: int = 0):
        self.prompts, self.seed = prompts, seed
        self._epoch, self._order = -1, None

    def indices(self, step: int, batch: int, rank: int = 0, world: int = 1) -> list[int]:
        start = (step * world + rank) * batch
        out = []
        for i in range(start, start + batch):
            epoch, pos = divmod(i, len(self.prompts))
            if epoch != self._epoch:
                self._epoch = epoch
                self._order = np.random.default_rng([self.seed, epoch]).permutation(len(self.prompts))
            out.append(int(self._order[pos]))
        return out

    def batch(self, step: int, batch: int, rank: int = 0, world: int = 1) -> list[str]:
        return [self.prompts[i] for i in self.indices(step, batch, rank, world)]
