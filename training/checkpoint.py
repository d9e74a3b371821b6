"""Atomic checkpoints (safetensors for weights; optimiser states through torch.load(weights_only=True))
and the student's exponential moving average."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import torch

LATEST = "latest"


class EMA:
    """fp32 shadow copy of a module's parameters, updated as shadow += (1 - decay) * (p - shadow)."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {n: p.detach().float().clone() for n, p in module.named_parameters()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        for n, p in module.named_parameters():
            self.shadow[n].lerp_(p.detach().float(), 1 - self.decay)

    @contextlib.contextmanager
    def applied(self, module: torch.nn.Module):
        """Temporarily load the shadow weights into `module`."""
        saved = {n: p.detach().clone() for n, p in module.named_parameters()}
        with torch.no_grad():
            for n, p in module.named_parameters():
                p.copy_(self.shadow[n])
        try:
            yield module
        finally:
            with torch.no_grad():
                for n, p in module.named_parameters():
                    p.copy_(saved[n])


def _inner(optimizer):
    return getattr(optimizer, "optimizer", optimizer)


def save(
    root: Path,
    step: int,
    student,
    ema: EMA,
    pool,
    opt_g,
    opt_d,
    ages: torch.Tensor,
    config: dict,
    keep: int,
    extra: dict[str, str] | None = None,
) -> Path:
    """Write checkpoints/step_N atomically (temp folder, then rename) and point `latest` at it.
    `extra` maps file names to text written beside the weights (the diagnostics summary)."""
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".step_{step:08d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in student.state_dict().items()}, str(tmp / "student.safetensors")
    )
    save_file({k: v.contiguous().cpu() for k, v in ema.shadow.items()}, str(tmp / "ema.safetensors"))
    heads = {k: v.detach().contiguous().cpu() for k, v in pool.state_dict().items()}
    heads["__ages__"] = ages.cpu()
    save_file(heads, str(tmp / "heads.safetensors"))
    torch.save({"g": _inner(opt_g).state_dict(), "d": _inner(opt_d).state_dict()}, tmp / "optimizers.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, "config": config}, indent=2))
    for name, text in (extra or {}).items():
        (tmp / name).write_text(text)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    pointer = root / f".{LATEST}.tmp"
    pointer.write_text(final.name)
    os.replace(pointer, root / LATEST)
    for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(root: Path) -> Path | None:
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    return path if (path / "state.json").is_file() else None


def restore(path: Path, student, ema: EMA, pool, opt_g, opt_d, ages: torch.Tensor) -> int:
    """Load a checkpoint written by save(); returns the number of steps it had completed."""
    from safetensors.torch import load_file

    student.load_state_dict(load_file(str(path / "student.safetensors")))
    for k, v in load_file(str(path / "ema.safetensors")).items():
        ema.shadow[k].copy_(v)
    heads = load_file(str(path / "heads.safetensors"))
    ages.copy_(heads.pop("__ages__"))
    pool.load_state_dict(heads)
    optim = torch.load(path / "optimizers.pt", weights_only=True, map_location="cpu")
    _inner(opt_g).load_state_dict(optim["g"])
    _inner(opt_d).load_state_dict(optim["d"])
    return int(json.loads((path / "state.json").read_text())["step"])
