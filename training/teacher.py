"""The frozen teacher: its text encoders, its UNet (also the discriminator's backbone), and its
own few-step sampler producing the "real" x0 from the same noise the student starts from."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from nitro_edge._lazy import require
from nitro_edge.errors import InputError
from nitro_edge.specs import ModelDims


class Conditioner:
    """Prompts -> the UNet's conditioning (dict of tensors), through the teacher's text encoders."""

    def __init__(self, tokenizers, encoders: list, dims: ModelDims):
        self.tokenizers, self.encoders, self.dims = tokenizers, encoders, dims

    @torch.no_grad()
    def __call__(self, prompts: list[str], device) -> dict:
        outs = [enc(torch.from_numpy(tok(prompts)).to(device)) for tok, enc in zip(self.tokenizers, self.encoders)]
        cond = {"encoder_hidden_states": torch.cat([o[0] for o in outs], dim=-1)}
        if self.dims.architecture == "sdxl":
            cond["text_embeds"] = outs[-1][1]
            cond["time_ids"] = torch.from_numpy(self.dims.time_ids(len(prompts))).to(device)
        return cond


def unet_kwargs(cond: dict) -> dict:
    """Split a conditioning dict into UNet keyword arguments."""
    added = {k: cond[k] for k in ("text_embeds", "time_ids") if k in cond}
    return {"encoder_hidden_states": cond["encoder_hidden_states"], "added_cond_kwargs": added or None}


class TeacherSampler:
    """The teacher's own scheduler for `steps` steps, with CFG when guidance > 1: x_T -> x0."""

    def __init__(self, unet, teacher_dir: Path, steps: int, guidance: float, scheduler_name: str = ""):
        diffusers = require("diffusers", "torch")
        config = json.loads((Path(teacher_dir) / "scheduler" / "scheduler_config.json").read_text())
        name = scheduler_name or config.get("_class_name", "EulerDiscreteScheduler")
        cls = getattr(diffusers, name, None)
        if cls is None or not hasattr(cls, "set_timesteps"):
            raise InputError(f"teacher_scheduler must be a diffusers scheduler class, got {name!r}")
        self.scheduler = cls.from_config(config)
        self.unet, self.steps, self.guidance = unet, steps, guidance

    @torch.no_grad()
    def __call__(self, noise: torch.Tensor, cond: dict, uncond: dict | None) -> torch.Tensor:
        sched = self.scheduler
        sched.set_timesteps(self.steps, device=noise.device)
        x = noise * sched.init_noise_sigma
        cfg = self.guidance > 1 and uncond is not None
        for t in sched.timesteps:
            inp = sched.scale_model_input(x, t)
            out = self.unet(inp, t, **unet_kwargs(cond), return_dict=False)[0]
            if cfg:
                base = self.unet(inp, t, **unet_kwargs(uncond), return_dict=False)[0]
                out = base + self.guidance * (out - base)
            x = sched.step(out, t, x, return_dict=True).prev_sample
        # The sample the scheduler ends at, which is what the teacher's own diffusers pipeline
        # decodes (LCM-style schedulers return their `denoised` as the last prev_sample).
        return x


class TeacherCache:
    """Precomputed (noise, x0, conditioning) shards on disk, read one shard at a time.

    `build` writes shard_00000.safetensors, ... atomically and skips shards already written, so an
    interrupted precompute resumes. Sample i of the cache lives in shard i // shard_size.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        index_path = self.folder / "index.json"
        if not index_path.is_file():
            raise InputError(
                f"teacher cache {self.folder} has no index.json; build it with `nitro-edge train --precompute`"
            )
        self.index = json.loads(index_path.read_text())
        self._loaded: tuple[int, dict] | None = None

    def __len__(self) -> int:
        return int(self.index["complete_samples"])

    def get(self, i: int) -> dict[str, torch.Tensor]:
        if len(self) == 0:
            raise InputError(f"teacher cache {self.folder} is empty")
        i %= len(self)
        shard, offset = divmod(i, int(self.index["shard_size"]))
        if self._loaded is None or self._loaded[0] != shard:
            from safetensors.torch import load_file

            self._loaded = (shard, load_file(str(self.folder / f"shard_{shard:05d}.safetensors")))
        return {k: v[offset] for k, v in self._loaded[1].items()}

    @staticmethod
    def build(folder: str | Path, prompts: list[str], make_sample, shard_size: int, total: int, progress=None) -> Path:
        """Write `total` samples; make_sample(list of sample indices) -> dict of batched tensors."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        shards = (total + shard_size - 1) // shard_size
        for s in range(shards):
            path = folder / f"shard_{s:05d}.safetensors"
            if not path.exists():
                idx = list(range(s * shard_size, min(total, (s + 1) * shard_size)))
                tensors = {k: v.contiguous().cpu() for k, v in make_sample(idx).items()}
                tmp = path.with_suffix(".tmp")
                save_file(tensors, str(tmp))
                os.replace(tmp, path)
            complete = min(total, (s + 1) * shard_size)
            _write_json(folder / "index.json", {"shard_size": shard_size, "complete_samples": complete, "total": total})
            if progress:
                progress(complete, total)
        return folder


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def fixed_noise(seed: int, shape: tuple) -> torch.Tensor:
    """Noise for sample grids: the sampler's canonical numpy stream."""
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(shape, dtype=np.float32))
