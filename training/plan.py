"""`--dry-run`: what a run would hold, from the teacher's configs alone (no weights are loaded)."""

from __future__ import annotations

import json
from pathlib import Path

from nitro_edge._lazy import require
from nitro_edge.errors import InputError
from nitro_edge.sources import resolve_source
from nitro_edge.training.config import TrainConfig, k_schedule

BYTES = {"no": 4, "fp16": 2, "bf16": 2}


def plan(cfg: TrainConfig) -> dict:
    """Parameter counts, pool layout and a memory estimate (weights and optimiser state only)."""
    from nitro_edge.models import unet_encoder

    cfg.validate()
    source = resolve_source(cfg.teacher, shift=cfg.shift or 1000)
    cfg, unet, encoders, vae, pool, latent = _empty_models(cfg, source.path)

    vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
    per_slot = cfg.heads_per_slot or pool.candidates
    unet_params = sum(p.numel() for p in unet.parameters())
    text_params = sum(p.numel() for enc in encoders for p in enc.parameters())
    vae_params = sum(p.numel() for p in vae.parameters())
    head_params = [sum(p.numel() for p in h.parameters()) for h in pool.heads]
    active_per_step = len(pool.tasks) * pool.levels * min(per_slot, pool.candidates) * len(cfg.disc_timesteps)
    frozen = (unet_params + text_params + vae_params) * BYTES[cfg.mixed_precision]
    # Student and heads: fp32 weights, grads and two AdamW moments (16 B/param); EMA 4 B/param.
    trainable = unet_params * (16 + 4) + sum(head_params) * 4 + active_per_step * max(head_params) * 12
    return {
        "architecture": source.architecture,
        "resolution": latent * vae_scale,
        "teacher_unet_params": unet_params,
        "text_encoder_params": text_params,
        "student_params": unet_params,
        "levels": pool.levels,
        "level_channels": unet_encoder.level_channels(unet.config),
        "heads": len(pool),
        "candidates_per_slot": pool.candidates,
        "head_params_total": sum(head_params),
        "heads_trained_per_step": active_per_step,
        "refreshed_per_step": max(1, round(cfg.refresh_rate * len(pool))) if cfg.refresh_rate > 0 else 0,
        "estimated_memory_gib_excluding_activations": round((frozen + trainable) / 2**30, 2),
        "teacher": {"steps": cfg.teacher_steps, "guidance": cfg.teacher_guidance, "cache": cfg.teacher_cache or None},
        "shift": cfg.shift,
        "max_steps": cfg.max_steps,
        "stages": {
            "first_stage_steps": cfg.first_stage_steps,
            "adversarial_steps": cfg.max_steps - cfg.first_stage_steps,
            "student_steps": k_schedule(cfg.refine_starts, cfg.max_steps),
        },
        "resolved": {
            k: getattr(cfg, k)
            for k in (
                "lr_first_stage",
                "lr_student",
                "lr_heads",
                "ema_decay",
                "refine_starts",
                "heads_per_slot",
                "head_width",
            )
        },
    }


def _empty_models(cfg: TrainConfig, root):
    """The teacher's modules and the pool without weights (meta tensors), the config resolved for
    them, and the latent size; InputError for a resolution this teacher cannot take."""
    require("torch", "train")
    accelerate = require("accelerate", "train")
    diffusers = require("diffusers", "torch")
    transformers = require("transformers", "torch")
    from nitro_edge.models.loading import size_multiple
    from nitro_edge.training.backbone import EncoderBackbone
    from nitro_edge.training.train import build_pool

    with accelerate.init_empty_weights():  # root: a single-file teacher is read from its converted folder
        unet = diffusers.UNet2DConditionModel.from_config(json.loads((root / "unet" / "config.json").read_text()))
        encoders = [
            transformers.CLIPTextModel(transformers.CLIPTextConfig.from_pretrained(str(root / n)))
            for n in ("text_encoder", "text_encoder_2")
            if (root / n).is_dir()
        ]
        vae = diffusers.AutoencoderKL.from_config(json.loads((root / "vae" / "config.json").read_text()))
        backbone = EncoderBackbone(unet)
        cfg = cfg.resolve(unet.config)
        vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
        multiple = size_multiple(unet.config, vae_scale)
        if cfg.resolution % multiple:
            raise InputError(
                f"resolution must be a multiple of {multiple} for this teacher (or 0 for its own), got {cfg.resolution}"
            )
        latent = (cfg.resolution or unet.config.sample_size * vae_scale) // vae_scale
        return cfg, unet, encoders, vae, build_pool(cfg, backbone, latent), latent


def precompute(cfg: TrainConfig, total: int, shard_size: int = 256, progress=None) -> Path:
    """Fill cfg.teacher_cache with `total` (noise, x0, conditioning) samples; sample i uses prompt
    i mod len(prompts) and noise seeded by i, so the cache is the same however it is resumed."""
    import torch

    from nitro_edge.models.loading import load_modules
    from nitro_edge.training.data import PromptSampler, read_prompts
    from nitro_edge.training.teacher import Conditioner, TeacherCache, TeacherSampler

    if not cfg.teacher_cache:
        raise InputError("precompute needs teacher_cache (--set teacher_cache=FOLDER)")
    source = resolve_source(cfg.teacher, shift=cfg.shift or 1000)
    res = cfg.resolution or None
    dims, tokenizers, modules = load_modules(source, res, res)
    encoders = [modules[n] for n in ("text_encoder", "text_encoder_2") if n in modules]
    conditioner = Conditioner(tokenizers, encoders, dims)
    teacher = TeacherSampler(
        modules["generator"].unet, source.path, cfg.teacher_steps, cfg.teacher_guidance, cfg.teacher_scheduler
    )
    prompts = PromptSampler(read_prompts(cfg.prompts), cfg.seed)
    empty = conditioner([""], "cpu")

    def make(idx: list[int]) -> dict:
        texts = [prompts.prompts[i % len(prompts.prompts)] for i in idx]
        cond = conditioner(texts, "cpu")
        gens = [torch.Generator().manual_seed(cfg.seed * 1_000_003 + i) for i in idx]
        noise = torch.stack([torch.randn(dims.latent_shape, generator=g) for g in gens])
        uncond = {k: v.expand(len(idx), *v.shape[1:]) for k, v in empty.items()}
        return {"noise": noise, "x0": teacher(noise, cond, uncond), **cond}

    return TeacherCache.build(cfg.teacher_cache, prompts.prompts, make, shard_size, total, progress)
