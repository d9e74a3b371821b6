"""NitroFusion dynamic adversarial distillation: the training loop, top to bottom.

One iteration: the teacher turns noise into x0 ("real"); the student turns the same noise into
x̂0 ("fake") in k steps; one discriminator timestep t* and one head per (task, level) are drawn
from the pool; the heads learn to tell noised real from noised fake on the frozen teacher
encoder's features; the student learns to fool those same heads; ~1% of the pool is reborn.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from nitro_edge._lazy import require
from nitro_edge.runtimes.torch import Generator, load_unet, load_modules
from nitro_edge.sources import resolve_source
from nitro_edge.training import checkpoint
from nitro_edge.training.backbone import EncoderBackbone
from nitro_edge.training.config import TrainConfig
from nitro_edge.training.data import PromptSampler, read_prompts
from nitro_edge.training.heads import HeadPool, reset_optimizer_state
from nitro_edge.training.losses import approximate_r1, discriminator_loss, generator_loss
from nitro_edge.training.student import add_noise, crop, crop_window, steps_for, student_sample
from nitro_edge.training.teacher import Conditioner, TeacherCache, TeacherSampler, fixed_noise, unet_kwargs

log = logging.getLogger(__name__)


def step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    """Randomness for one step, derived from (seed, step, stream): a resumed run draws the same."""
    g = torch.Generator()
    g.manual_seed(int(np.random.SeedSequence([seed, step, stream + 1]).generate_state(1)[0]))
    return g


def train(cfg: TrainConfig, progress: bool = True) -> Path:
    """Run (or resume) training into cfg.output; returns the student pipeline folder."""
    cfg.validate()
    accelerate = require("accelerate", "train")
    # cpu=True when there is no GPU, so torchrun/accelerate launch on CPU sets up gloo.
    acc = accelerate.Accelerator(mixed_precision=cfg.mixed_precision, cpu=not torch.cuda.is_available())
    device, rank, world = acc.device, acc.process_index, acc.num_processes
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
        torch.backends.cudnn.allow_tf32 = cfg.tf32
    out = Path(cfg.output)
    weight_dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[cfg.mixed_precision]

    # --- The frozen teacher: text encoders, UNet (also the discriminator backbone), sampler.
    source = resolve_source(cfg.teacher, shift=cfg.shift)
    res = cfg.resolution or None
    dims, tokenizers, modules = load_modules(source, res, res)
    sdxl = dims.architecture == "sdxl"
    teacher_unet = _place(modules["generator"].unet, device, weight_dtype)
    encoders = [_place(modules[n], device, weight_dtype) for n in ("text_encoder", "text_encoder_2") if n in modules]
    conditioner = Conditioner(tokenizers, encoders, dims.architecture, dims.height, dims.width)
    teacher = TeacherSampler(teacher_unet, source.path, cfg.teacher_steps, cfg.teacher_guidance, cfg.teacher_scheduler)
    cache = TeacherCache(cfg.teacher_cache) if cfg.teacher_cache else None
    backbone = EncoderBackbone(teacher_unet)

    # --- The student: the teacher's UNet (or a given one) with the shifted x0 step on top.
    student_unet = (copy.deepcopy(modules["generator"].unet) if not cfg.student_unet else
                    load_unet(require("diffusers", "torch"), resolve_source(cfg.teacher, unet=cfg.student_unet)))
    _place(student_unet, device, torch.float32).train().requires_grad_(True)
    if cfg.gradient_checkpointing:
        student_unet.enable_gradient_checkpointing()
    student = Generator(student_unet, source.params, sdxl).to(device)
    alphas = torch.from_numpy(source.params.schedule.alphas_cumprod()).to(device)

    # --- The discriminator pool: heads per (t*, task, level), at each level's map size. Seeded:
    # every rank must build identical heads, and a rerun must build the same ones.
    torch.manual_seed(cfg.seed)
    latent_h = dims.latent_shape[1]
    sizes = [max(1, latent_h // s) for s in backbone.strides]
    pool = HeadPool(backbone.channels, sizes, tuple(cfg.disc_timesteps), cfg.pool_size,
                    cfg.head_width, cfg.local_fraction, tuple(cfg.tasks)).to(device)
    ages = torch.zeros(len(pool), dtype=torch.int64)
    betas = tuple(cfg.adam_betas)
    opt_g = torch.optim.AdamW(student_unet.parameters(), lr=cfg.lr_student, betas=betas, weight_decay=cfg.weight_decay)
    opt_d = torch.optim.AdamW(pool.parameters(), lr=cfg.lr_heads, betas=betas, weight_decay=cfg.weight_decay)
    ema = checkpoint.EMA(student_unet, cfg.ema_decay)

    # --- Resume: a run folder with checkpoints continues from the latest one.
    start = 0
    last = checkpoint.latest(out / "checkpoints")
    if last is not None:
        start = checkpoint.restore(last, student_unet, ema, pool, opt_g, opt_d, ages)
        log.info("resumed from %s (step %d)", last, start)
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    # The student is DDP-wrapped; heads are not: every rank activates the same heads (shared
    # generator), so their gradients are averaged by hand, and idle heads cost no communication.
    student, opt_g, opt_d = acc.prepare(student, opt_g, opt_d)
    prompts = PromptSampler(read_prompts(cfg.prompts), cfg.seed)
    # With a cache, the data are its samples: draw a per-epoch permutation of them instead.
    order = PromptSampler([""] * len(cache), cfg.seed) if cache is not None else prompts
    empty = conditioner([""], device)
    writer = _writer(out, acc)
    bar = _progress(cfg.max_steps, start, acc.is_main_process and progress)

    for step in range(start, cfg.max_steps):
        tick = time.perf_counter()
        gen = step_generator(cfg.seed, step, rank)      # this rank's noise and crops
        shared = step_generator(cfg.seed, step, -1)      # the same on every rank: heads, k, refresh
        # One discriminator timestep per sample (balanced), one head per (t*, task, level).
        t_per_sample, picks = pool.select_all(shared, cfg.batch_size)
        active = sorted({i for by_task in picks.values() for ids in by_task.values() for i in ids})
        stats = {f"loss_{side}/{task}/t{t}": 0.0 for side in "dg" for t in picks for task in pool.tasks}

        for micro in range(cfg.gradient_accumulation):
            sync = micro == cfg.gradient_accumulation - 1
            # 1. Data: prompts, conditioning, noise, and the teacher's x0 from that noise.
            sample_ids = order.indices(step * cfg.gradient_accumulation + micro, cfg.batch_size, rank, world)
            n = len(sample_ids)
            uncond = {k: v.expand(n, *v.shape[1:]) for k, v in empty.items()}
            if cache is not None:
                items = [cache.get(i) for i in sample_ids]
                noise = torch.stack([it["noise"] for it in items]).to(device)
                real = torch.stack([it["x0"] for it in items]).to(device)
                cond = {k: torch.stack([it[k] for it in items]).to(device) for k in items[0] if k not in ("noise", "x0")}
            else:
                cond = conditioner([prompts.prompts[i] for i in sample_ids], device)
                noise = torch.randn((n, *dims.latent_shape), generator=gen).to(device)
                with acc.autocast():
                    real = teacher(noise.to(weight_dtype), cond, uncond).float()

            # 2. The student's x̂0 from the same noise, in k steps (bottom-up refinement); k is
            # drawn from the shared generator, since DDP needs the same forwards on every rank.
            k = steps_for(step, cfg.refine_starts, shared)
            context = acc.no_sync(student) if not sync and world > 1 else contextlib.nullcontext()
            with context, acc.autocast():
                fake = student_sample(student, noise, cond, source.params, k, alphas, gen).float()

            # 3. Discriminator: each sample noised to its own t*, real and fake with the same noise;
            # features without grad (the backbone is frozen and the heads read detached maps).
            eps = torch.randn(noise.shape, generator=gen).to(device)
            corner = crop_window(cfg.local_fraction, gen)
            t_batch = torch.tensor(t_per_sample[:n], dtype=torch.int64, device=device)
            with torch.no_grad(), acc.autocast():
                noisy_real = add_noise(real, eps, t_batch, alphas).to(weight_dtype)
                noisy_fake = add_noise(fake.detach(), eps, t_batch, alphas).to(weight_dtype)
                conds = _conds(pool, cond, uncond)
                seen = {side: {c: backbone(x, t_batch, **unet_kwargs(cd)) for c, cd in conds.items()}
                        for side, x in (("real", noisy_real), ("fake", noisy_fake))}
                if cfg.r1_weight > 0:
                    perturbed = noisy_real + cfg.r1_sigma * torch.randn(noise.shape, generator=gen).to(device)
                    seen["perturbed"] = {"cond": backbone(perturbed.to(weight_dtype), t_batch, **unet_kwargs(cond))}
            with acc.autocast():
                real_logits = _judge(pool, picks, t_batch, seen["real"], cfg.local_fraction, corner)
                fake_logits = _judge(pool, picks, t_batch, seen["fake"], cfg.local_fraction, corner)
                if cfg.r1_weight > 0:
                    global_only = {t: {"global_cond": by_task["global_cond"]} for t, by_task in picks.items()
                                   if "global_cond" in by_task}
                    pert_logits = _judge(pool, global_only, t_batch, seen["perturbed"], cfg.local_fraction, corner)
                d_loss = 0.0
                for key in real_logits:
                    pairs = list(zip(real_logits[key], fake_logits[key]))
                    loss = sum(discriminator_loss(r, f, cfg.loss) for r, f in pairs) / len(pairs)
                    if cfg.r1_weight > 0 and key in pert_logits:
                        loss = loss + cfg.r1_weight * sum(approximate_r1(r, q) for r, q in
                                                          zip(real_logits[key], pert_logits[key])) / len(pairs)
                    stats[f"loss_d/{key[1]}/t{key[0]}"] += float(loss.detach()) / cfg.gradient_accumulation
                    d_loss = d_loss + loss / len(real_logits)
            acc.backward(d_loss / cfg.gradient_accumulation)

            # 4. Generator: the same heads, frozen, judge x̂0; gradients flow through the backbone.
            pool.requires_grad_(False)
            with context, acc.autocast():
                noisy = add_noise(fake, eps, t_batch, alphas).to(weight_dtype)
                feats = {c: backbone(noisy, t_batch, **unet_kwargs(cd)) for c, cd in _conds(pool, cond, uncond).items()}
                logits = _judge(pool, picks, t_batch, feats, cfg.local_fraction, corner)
                g_loss = 0.0
                for key, maps in logits.items():
                    loss = sum(generator_loss(m, cfg.loss) for m in maps) / len(maps)
                    stats[f"loss_g/{key[1]}/t{key[0]}"] += float(loss.detach()) / cfg.gradient_accumulation
                    g_loss = g_loss + loss / len(logits)
                acc.backward(g_loss / cfg.gradient_accumulation)
            pool.requires_grad_(True)

        # 5. Update: average the active heads' gradients over ranks, then step both sides.
        if world > 1:
            for i in active:
                for p in pool.heads[i].parameters():
                    if p.grad is not None:
                        p.grad = acc.reduce(p.grad, reduction="mean")
        stats["grad_norm/student"] = float(acc.clip_grad_norm_(student_unet.parameters(), float("inf")))
        stats["grad_norm/heads"] = float(torch.nn.utils.clip_grad_norm_(
            [p for i in active for p in pool.heads[i].parameters()], float("inf")))
        opt_d.step()
        opt_g.step()
        opt_d.zero_grad(set_to_none=True)
        opt_g.zero_grad(set_to_none=True)
        ema.update(student_unet)

        # 6. Refresh: re-initialise ~1% of the pool with fresh optimiser state (same on all ranks).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(2**31, (1,), generator=shared)))
            reborn = pool.refresh(cfg.refresh_rate, shared)
        for i in reborn:
            reset_optimizer_state(getattr(opt_d, "optimizer", opt_d), pool.heads[i])
        ages += 1
        ages[reborn] = 0

        done = step + 1
        stats["head_age/mean"], stats["head_age/max"] = float(ages.float().mean()), float(ages.max())
        stats["images_per_s"] = cfg.batch_size * cfg.gradient_accumulation * world / (time.perf_counter() - tick)
        stats["student_steps"] = k
        if writer is not None and (done % cfg.log_every == 0 or done == cfg.max_steps):
            for key, value in stats.items():
                writer.add_scalar(key, value, done)
        if bar is not None:
            bar.set_postfix(d=f"{float(d_loss.detach()):.3f}", g=f"{float(g_loss.detach()):.3f}", k=k)
            bar.update(1)
        if done % cfg.sample_every == 0 or done == cfg.max_steps:
            _sample_grid(out, done, cfg, student_unet, ema, source.params, conditioner, modules["vae_decoder"],
                         dims, device, writer, acc)
        if done % cfg.checkpoint_every == 0 or done == cfg.max_steps:
            _check_ranks_agree(acc, student_unet, pool)
            if acc.is_main_process:
                checkpoint.save(out / "checkpoints", done, student_unet, ema, pool, opt_g, opt_d, ages,
                                cfg.to_dict(), cfg.keep_checkpoints)
    if bar is not None:
        bar.close()
    acc.wait_for_everyone()
    result = out / "student"
    if acc.is_main_process:
        write_student_pipeline(source.path, result, student_unet, ema, cfg.shift)
    if writer is not None:
        writer.close()
    acc.wait_for_everyone()
    return result


def _check_ranks_agree(acc, student_unet, pool) -> None:
    """Every rank must hold the same student and heads; a divergence is a bug, so stop loudly."""
    if acc.num_processes == 1:
        return
    sums = torch.stack([sum(p.detach().double().sum() for p in m.parameters()) for m in (student_unet, pool)])
    gathered = acc.gather(sums.to(acc.device)).view(acc.num_processes, 2)
    if not bool((gathered == gathered[0]).all()):
        raise RuntimeError(f"ranks disagree on weights (student, heads) checksums: {gathered.tolist()}")


def _place(module, device, dtype):
    """Move/cast only when needed (diffusers warns on every .to() of a UNet)."""
    p = next(module.parameters())
    if p.device != device or p.dtype != dtype:
        module.to(device=device, dtype=dtype)
    return module


def _cond(task: str) -> str:
    return "uncond" if task == "local_uncond" else "cond"


def _conds(pool, cond, uncond) -> dict:
    """The conditionings the pool's tasks need: the prompt, and the empty prompt for unconditional heads."""
    return {"cond": cond, **({"uncond": uncond} if "local_uncond" in pool.tasks else {})}


def _judge(pool, picks, t_batch, features, fraction, corner) -> dict:
    """{(t*, task): [logit map per level]}: each head reads its level, for the samples at its t*,
    whole for global heads and the shared crop window for local heads."""
    out = {}
    for t, by_task in picks.items():
        rows = t_batch == t
        for task, ids in by_task.items():
            maps = features[_cond(task)]
            local = task != "global_cond"
            out[(t, task)] = [pool.heads[i](crop(maps[level][rows], fraction, corner) if local else maps[level][rows])
                              for level, i in enumerate(ids)]
    return out


def _writer(out: Path, acc):
    if not acc.is_main_process:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("tensorboard is not installed: no scalars are logged (pip install 'nitro-edge[train]')")
        return None
    return SummaryWriter(str(out / "logs"))


def _progress(total: int, start: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True)


@torch.no_grad()
def _sample_grid(out, step, cfg, unet, ema, params, conditioner, vae_decoder, dims, device, writer, acc):
    """1-step samples of the EMA student from fixed noise, as a PNG row and a TensorBoard image."""
    if not acc.is_main_process:
        return
    from PIL import Image

    prompts = list(cfg.sample_prompts)
    cond = conditioner(prompts, device)
    noise = fixed_noise(cfg.seed, (len(prompts), *dims.latent_shape)).to(device)
    gen = Generator(unet, params, dims.architecture == "sdxl").to(device)
    extra = {k: cond[k] for k in ("text_embeds", "time_ids") if k in cond}
    t = torch.full((len(prompts),), int(params.generator_timesteps(1)[0]), dtype=torch.int64, device=device)
    was_training = unet.training
    unet.eval()
    with ema.applied(unet):
        latents = gen(noise, t, cond["encoder_hidden_states"].float(), **{k: v.float() for k, v in extra.items()})[0]
    unet.train(was_training)
    images = vae_decoder.to(device)(latents)[0].float().cpu()  # (B, 3, H, W) in [0, 1]
    row = torch.cat(list(images), dim=2)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    Image.fromarray((row.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(out / "samples" / f"step_{step:08d}.png")
    if writer is not None:
        writer.add_image("samples/ema_1step", row, step)


def write_student_pipeline(teacher: Path, dest: Path, unet, ema, shift: int) -> Path:
    """The student as a diffusers pipeline folder: teacher's encoders, tokenizers and VAE, the EMA
    UNet, and an LCMScheduler config recording `shifted_timestep`."""
    tmp = dest.parent / f".{dest.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(teacher, tmp, ignore=shutil.ignore_patterns("unet", "scheduler"))
    with ema.applied(unet):
        unet.save_pretrained(str(tmp / "unet"))
    sched = json.loads((teacher / "scheduler" / "scheduler_config.json").read_text())
    keep = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type")
    config = {"_class_name": "LCMScheduler", **{k: sched[k] for k in keep if k in sched},
              "original_inference_steps": 4, "shifted_timestep": int(shift), "timestep_scaling": 10.0}
    (tmp / "scheduler").mkdir()
    (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(config, indent=2))
    index = json.loads((tmp / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "LCMScheduler"]
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
    old = dest.parent / f".{dest.name}.old"
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)
    return dest
