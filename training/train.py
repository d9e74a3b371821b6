"""NitroFusion dynamic adversarial distillation: the training loop, top to bottom.

One iteration: the teacher turns noise into x0 ("real"); the student turns the same noise into
x̂0 ("fake") in k steps; a discriminator timestep t* per sample and one head per (t*, task, level)
are drawn from the pool; the heads learn to tell noised real from noised fake on the frozen teacher
encoder's features; the student learns to fool those same heads; ~1% of the pool is reborn.
The loop is `train()` below; setup and each phase are the named functions after it.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nitro_edge._lazy import require
from nitro_edge.models.loading import load_modules, load_unet
from nitro_edge.models.wrappers import Generator
from nitro_edge.sources import Source, resolve_source
from nitro_edge.specs import ModelDims
from nitro_edge.training import checkpoint
from nitro_edge.training.backbone import EncoderBackbone
from nitro_edge.training.config import TrainConfig
from nitro_edge.training.data import PromptSampler, read_prompts
from nitro_edge.training.diagnostics import Diagnostics
from nitro_edge.training.first_stage import regression_step
from nitro_edge.training.heads import HeadPool, reset_optimizer_state, run_heads
from nitro_edge.training.losses import PER_HEAD, approximate_r1, discriminator_loss, generator_loss
from nitro_edge.training.student import add_noise, crop, crop_window, steps_for, student_sample
from nitro_edge.training.teacher import Conditioner, TeacherCache, TeacherSampler, fixed_noise, unet_kwargs

log = logging.getLogger(__name__)
FIRST_STAGE_BETAS = (0.9, 0.999)  # plain regression: the usual Adam moments (the adversarial stage uses adam_betas)


def train(cfg: TrainConfig, progress: bool = True, on_step=None) -> Path:
    """Run (or resume) training into cfg.output; returns the student pipeline folder.
    `on_step(step, stats)` is called after every iteration with its logged numbers."""
    cfg.validate()
    with _tf32(cfg.tf32):
        run = setup(cfg)
        cfg = run.cfg  # every auto value resolved for this teacher and budget
        run.on_step = on_step
        start = resume(run)
        bar = _progress(cfg.max_steps, start, run.acc.is_main_process and progress)
        for step in range(start, cfg.max_steps):
            tick = time.perf_counter()
            gen = step_generator(cfg.seed, step, run.rank)  # this rank's noise and crops
            shared = step_generator(cfg.seed, step, -1)  # the same on every rank: heads, k, refresh
            # Both stages have the same shape: micro-batches, then one update of the student.
            stage = first_stage_step if step < cfg.first_stage_steps else adversarial_step
            stats, loss = stage(run, step, gen, shared)
            stats["images_per_s"] = (
                cfg.batch_size * cfg.gradient_accumulation * run.world / (time.perf_counter() - tick)
            )
            record(run, step + 1, stats, bar, loss)
        if bar is not None:
            bar.close()
        return finish(run)


def first_stage_step(run: Run, step: int, gen: torch.Generator, shared: torch.Generator) -> tuple[dict, torch.Tensor]:
    """0. First stage (optional): a one-step starting point, by regressing the student's x̂0 onto
    the teacher's x0 (training/first_stage.py; the paper starts from one-step weights instead)."""
    cfg, stats = run.cfg, {}
    _stage(run, "first")
    for micro in range(cfg.gradient_accumulation):
        # k from the same bottom-up schedule as the adversarial stage (one step by default).
        k = steps_for(step, cfg.refine_starts, shared, cfg.one_step_share)
        batch = data_batch(run, step * cfg.gradient_accumulation + micro, gen)
        with _no_sync(run, micro == cfg.gradient_accumulation - 1):
            loss = regression_step(run, batch, k, gen, stats, cfg.gradient_accumulation)
    update(run, {}, stats)
    stats["student_steps"] = k
    return stats, loss


def adversarial_step(run: Run, step: int, gen: torch.Generator, shared: torch.Generator) -> tuple[dict, torch.Tensor]:
    """One iteration of NitroFusion's adversarial stage, phase by phase."""
    cfg = run.cfg
    _stage(run, "adversarial")
    # One discriminator timestep per sample (balanced); heads_per_slot heads per (t*, task, level).
    t_per_sample, picks = run.pool.select_all(shared, cfg.batch_size, cfg.heads_per_slot or run.pool.candidates)
    stats = {f"loss_{side}/{task}/t{t}": 0.0 for side in "dg" for t in picks for task in run.pool.tasks}
    for micro in range(cfg.gradient_accumulation):
        sync = micro == cfg.gradient_accumulation - 1
        # 1. Data: prompts, conditioning, noise, and the teacher's x0 from that noise.
        batch = data_batch(run, step * cfg.gradient_accumulation + micro, gen)
        # 2. The student's x̂0 from the same noise, in k steps (bottom-up refinement); k comes
        # from the shared generator, since DDP needs the same forwards on every rank.
        k = steps_for(step, cfg.refine_starts, shared, cfg.one_step_share)
        with _no_sync(run, sync), run.acc.autocast():
            fake = student_sample(run.student, batch.noise, batch.cond, run.source.params, k, run.alphas, gen).float()
        # 3. Discriminator: real and fake noised to each sample's t* with the same noise.
        view = Judging.draw(run, batch, t_per_sample, gen)
        discriminator_phase(run, batch, fake, view, picks, stats, gen)
        # 4. Generator: the same heads, frozen, judge x̂0; gradients flow through the backbone.
        with _no_sync(run, sync):
            g_loss = generator_phase(run, batch, fake, view, picks, stats)
    # 5. Update both sides (the active heads' gradients averaged over ranks first).
    update(run, picks, stats)
    # 6. Refresh: re-initialise ~1% of the pool with fresh optimiser state (same on all ranks).
    refresh(run, shared)
    stats["student_steps"] = k
    return stats, g_loss


def step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    """Randomness for one step, derived from (seed, step, stream): a resumed run draws the same."""
    g = torch.Generator()
    g.manual_seed(int(np.random.SeedSequence([seed, step, stream + 1]).generate_state(1)[0]))
    return g


# ---------------------------------------------------------------- setup


@dataclass
class Run:
    """Everything the loop reads, built once by setup()."""

    cfg: TrainConfig
    acc: object  # accelerate.Accelerator
    out: Path
    weight_dtype: torch.dtype
    source: Source
    dims: ModelDims
    conditioner: Conditioner
    teacher: TeacherSampler
    cache: TeacherCache | None
    backbone: EncoderBackbone
    vae_decoder: torch.nn.Module
    student_unet: torch.nn.Module
    student: torch.nn.Module  # the Generator wrapper (x0 step), DDP-wrapped when world > 1
    alphas: torch.Tensor
    pool: HeadPool
    ages: torch.Tensor
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    ema: checkpoint.EMA
    prompts: PromptSampler
    order: PromptSampler  # what a step's samples are: prompts, or cache entries
    empty: dict  # the empty prompt's conditioning (unconditional heads, CFG)
    writer: object | None
    diagnostics: Diagnostics
    stage: str = ""  # "first" or "adversarial": what the student's optimiser is set up for
    on_step: object = None  # callable(step, stats), or None

    @property
    def device(self) -> torch.device:
        return self.acc.device

    @property
    def rank(self) -> int:
        return self.acc.process_index

    @property
    def world(self) -> int:
        return self.acc.num_processes


def setup(cfg: TrainConfig) -> Run:
    """Load the teacher, build the student, the pool and the optimisers, and prepare them for DDP."""
    accelerate = require("accelerate", "train")
    # cpu=True when there is no GPU, so torchrun/accelerate launch on CPU sets up gloo.
    acc = accelerate.Accelerator(mixed_precision=cfg.mixed_precision, cpu=not torch.cuda.is_available())
    device = acc.device
    weight_dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[cfg.mixed_precision]

    # The frozen teacher: text encoders, UNet (also the discriminator backbone), sampler.
    source = resolve_source(cfg.teacher, shift=cfg.shift or 1000)
    res = cfg.resolution or None
    dims, tokenizers, modules = load_modules(source, res, res)
    cfg = cfg.resolve(modules["generator"].unet.config)
    teacher_unet = _place(modules["generator"].unet, device, weight_dtype)
    encoders = [_place(modules[n], device, weight_dtype) for n in ("text_encoder", "text_encoder_2") if n in modules]
    conditioner = Conditioner(tokenizers, encoders, dims)
    teacher = TeacherSampler(teacher_unet, source.path, cfg.teacher_steps, cfg.teacher_guidance, cfg.teacher_scheduler)
    cache = TeacherCache(cfg.teacher_cache) if cfg.teacher_cache else None

    student_unet, student = _student(cfg, source, dims, modules["generator"].unet, device)
    backbone = EncoderBackbone(teacher_unet)
    pool = build_pool(cfg, backbone, dims.latent_shape[1]).to(device)
    betas = tuple(cfg.adam_betas)
    opt_g = _adamw(student_unet.parameters(), lr=cfg.lr_student, betas=betas, weight_decay=cfg.weight_decay)
    opt_d = _adamw(pool.parameters(), lr=cfg.lr_heads, betas=betas, weight_decay=cfg.weight_decay)
    ema = checkpoint.EMA(student_unet, cfg.ema_decay)
    # The student is DDP-wrapped; heads are not: every rank activates the same heads (shared
    # generator), so their gradients are averaged by hand, and idle heads cost no communication.
    student, opt_g, opt_d = acc.prepare(student, opt_g, opt_d)

    prompts = PromptSampler(read_prompts(cfg.prompts), cfg.seed)
    # With a cache, the data are its samples: draw a per-epoch permutation of them instead.
    order = PromptSampler([""] * len(cache), cfg.seed) if cache is not None else prompts
    return Run(
        cfg=cfg,
        acc=acc,
        out=Path(cfg.output),
        weight_dtype=weight_dtype,
        source=source,
        dims=dims,
        conditioner=conditioner,
        teacher=teacher,
        cache=cache,
        backbone=backbone,
        vae_decoder=modules["vae_decoder"],
        student_unet=student_unet,
        student=student,
        alphas=torch.from_numpy(source.params.schedule.alphas_cumprod()).to(device),
        pool=pool,
        ages=torch.zeros(len(pool), dtype=torch.int64),
        opt_g=opt_g,
        opt_d=opt_d,
        ema=ema,
        prompts=prompts,
        order=order,
        empty=conditioner([""], device),
        writer=_writer(Path(cfg.output), acc),
        diagnostics=Diagnostics(tuple(cfg.disc_timesteps), cfg.loss, cfg.diagnostics_window),
    )


def _student(cfg: TrainConfig, source: Source, dims: ModelDims, teacher_unet, device):
    """The student's UNet (a copy of the teacher's, or the one given) in fp32, training, and the
    Generator wrapper that puts the shifted x0 step on top of it."""
    if cfg.student_unet:
        student_unet = load_unet(resolve_source(cfg.teacher, unet=cfg.student_unet))
    else:
        student_unet = copy.deepcopy(teacher_unet)
    _place(student_unet, device, torch.float32).train().requires_grad_(True)
    if cfg.gradient_checkpointing:
        student_unet.enable_gradient_checkpointing()
    return student_unet, Generator(student_unet, source.params, dims.architecture == "sdxl").to(device)


def build_pool(cfg: TrainConfig, backbone: EncoderBackbone, latent_size: int) -> HeadPool:
    """The discriminator pool: heads per (t*, task, level), at each level's map size. Seeded (on a
    forked generator, so the caller's global RNG is left as it was): every rank must build
    identical heads, and a rerun must build the same ones."""
    sizes = [max(1, latent_size // s) for s in backbone.strides]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return HeadPool(
            backbone.channels,
            sizes,
            tuple(cfg.disc_timesteps),
            cfg.pool_size,
            cfg.head_width,
            cfg.local_fraction,
            tuple(cfg.tasks),
        )


def resume(run: Run) -> int:
    """Continue from the run folder's latest checkpoint (0 if none); write the config beside it."""
    start = 0
    last = checkpoint.latest(run.out / "checkpoints")
    if last is not None:
        start = checkpoint.restore(last, run.student_unet, run.ema, run.pool, run.opt_g, run.opt_d, run.ages)
        log.info("resumed from %s (step %d)", last, start)
        if start <= run.cfg.first_stage_steps:  # the restored optimiser state is the first stage's
            run.stage = "first"
    if run.acc.is_main_process:
        run.out.mkdir(parents=True, exist_ok=True)
        (run.out / "config.json").write_text(json.dumps(run.cfg.to_dict(), indent=2))
    return start


# ---------------------------------------------------------------- one iteration's phases


@dataclass
class Batch:
    cond: dict  # the prompts' conditioning
    uncond: dict  # the empty prompt's, expanded to the batch
    noise: torch.Tensor  # x_T, shared by teacher and student
    real: torch.Tensor  # the teacher's x0 from `noise`


def data_batch(run: Run, index: int, gen: torch.Generator) -> Batch:
    """The samples of micro-batch `index` on this rank: from the teacher cache, or the teacher online."""
    cfg, device = run.cfg, run.device
    sample_ids = run.order.indices(index, cfg.batch_size, run.rank, run.world)
    n = len(sample_ids)
    uncond = {k: v.expand(n, *v.shape[1:]) for k, v in run.empty.items()}
    if run.cache is not None:
        items = [run.cache.get(i) for i in sample_ids]
        noise = torch.stack([it["noise"] for it in items]).to(device)
        real = torch.stack([it["x0"] for it in items]).to(device)
        cond = {k: torch.stack([it[k] for it in items]).to(device) for k in items[0] if k not in ("noise", "x0")}
        return Batch(cond, uncond, noise, real)
    cond = run.conditioner([run.prompts.prompts[i] for i in sample_ids], device)
    noise = torch.randn((n, *run.dims.latent_shape), generator=gen).to(device)
    with run.acc.autocast():
        real = run.teacher(noise.to(run.weight_dtype), cond, uncond).float()
    return Batch(cond, uncond, noise, real)


@dataclass
class Judging:
    """What the discriminator and generator phases of one micro-batch share: each sample's t*, the
    noise both sides are noised with, and the local crop's window."""

    t_batch: torch.Tensor
    eps: torch.Tensor
    corner: tuple[float, float]

    @classmethod
    def draw(cls, run: Run, batch: Batch, t_per_sample: list[int], gen: torch.Generator) -> Judging:
        eps = torch.randn(batch.noise.shape, generator=gen).to(run.device)
        corner = crop_window(run.cfg.local_fraction, gen)
        t_batch = torch.tensor(t_per_sample[: len(batch.noise)], dtype=torch.int64, device=run.device)
        return cls(t_batch, eps, corner)

    def doubled(self) -> Judging:
        """The view of real and fake samples stacked (real first): the same t* and crop for both."""
        return Judging(torch.cat([self.t_batch] * 2), self.eps, self.corner)


def discriminator_phase(
    run: Run, batch: Batch, fake: torch.Tensor, view: Judging, picks: dict, stats: dict, gen: torch.Generator
) -> torch.Tensor:
    """The heads learn to tell noised real from noised fake; features without grad (the backbone
    is frozen and the heads read detached maps). Returns the loss it back-propagated."""
    cfg, pool = run.cfg, run.pool
    with torch.no_grad(), run.acc.autocast():
        noisy_real = add_noise(batch.real, view.eps, view.t_batch, run.alphas).to(run.weight_dtype)
        noisy_fake = add_noise(fake.detach(), view.eps, view.t_batch, run.alphas).to(run.weight_dtype)
        conds = _conds(pool, batch.cond, batch.uncond)
        # Real and fake stacked (real first): one backbone call and one call of the heads for both.
        both = real_and_fake_features(run, noisy_real, noisy_fake, view.t_batch, conds)
        if cfg.r1_weight > 0:
            perturbed = noisy_real + cfg.r1_sigma * torch.randn(batch.noise.shape, generator=gen).to(run.device)
            seen_perturbed = _features(run, perturbed.to(run.weight_dtype), view.t_batch, {"cond": batch.cond})
    with run.acc.autocast():
        judged = _judge(pool, picks, view.doubled(), both, cfg.local_fraction, cfg.batched_discriminator)
        real_logits, fake_logits = {}, {}
        for (t, task), maps in judged.items():
            n = int((view.t_batch == t).sum())
            real_logits[(t, task)], fake_logits[(t, task)] = [m[:n] for m in maps], [m[n:] for m in maps]
        if cfg.r1_weight > 0:
            global_only = {
                t: {"global_cond": by_task["global_cond"]} for t, by_task in picks.items() if "global_cond" in by_task
            }
            pert_logits = _judge(pool, global_only, view, seen_perturbed, cfg.local_fraction, cfg.batched_discriminator)
        d_loss = 0.0
        for key in real_logits:
            # The mean over the (t*, task)'s heads of each head's loss (logit maps hold a head per channel).
            loss = torch.cat(
                [discriminator_loss(r, f, cfg.loss, PER_HEAD) for r, f in zip(real_logits[key], fake_logits[key])]
            ).mean()
            if cfg.r1_weight > 0 and key in pert_logits:
                penalty = [approximate_r1(r, q, PER_HEAD) for r, q in zip(real_logits[key], pert_logits[key])]
                loss = loss + cfg.r1_weight * torch.cat(penalty).mean()
            stats[f"loss_d/{key[1]}/t{key[0]}"] += float(loss.detach()) / cfg.gradient_accumulation
            run.diagnostics.observe_discriminator(key[0], real_logits[key], fake_logits[key], float(loss.detach()))
            d_loss = d_loss + loss / len(real_logits)
    run.acc.backward(d_loss / cfg.gradient_accumulation)
    return d_loss


def generator_phase(
    run: Run, batch: Batch, fake: torch.Tensor, view: Judging, picks: dict, stats: dict
) -> torch.Tensor:
    """The student learns to fool the same heads, frozen; adversarial loss only, as the paper
    prescribes. Returns the loss it back-propagated."""
    cfg, pool = run.cfg, run.pool
    pool.requires_grad_(False)
    with run.acc.autocast():
        noisy = add_noise(fake, view.eps, view.t_batch, run.alphas).to(run.weight_dtype)
        feats = _features(run, noisy, view.t_batch, _conds(pool, batch.cond, batch.uncond))
        logits = _judge(pool, picks, view, feats, cfg.local_fraction, cfg.batched_discriminator)
        g_loss = 0.0
        for key, maps in logits.items():
            loss = torch.cat([generator_loss(m, cfg.loss, PER_HEAD) for m in maps]).mean()
            stats[f"loss_g/{key[1]}/t{key[0]}"] += float(loss.detach()) / cfg.gradient_accumulation
            run.diagnostics.observe_generator(key[0], float(loss.detach()))
            g_loss = g_loss + loss / len(logits)
        run.acc.backward(g_loss / cfg.gradient_accumulation)
    pool.requires_grad_(True)
    return g_loss


def update(run: Run, picks: dict, stats: dict) -> None:
    """Average the active heads' gradients over ranks, step both optimisers, update the EMA
    (the heads' optimiser steps nothing in the first stage: no head has a gradient)."""
    active = sorted({i for by_task in picks.values() for ids in by_task.values() for i in ids})
    if run.world > 1:
        for i in active:
            for p in run.pool.heads[i].parameters():
                if p.grad is not None:
                    p.grad = run.acc.reduce(p.grad, reduction="mean")
    stats["grad_norm/student"] = float(run.acc.clip_grad_norm_(run.student_unet.parameters(), float("inf")))
    if active:
        grads = [p.grad for i in active for p in run.pool.head_parameters[i] if p.grad is not None]
        stats["grad_norm/heads"] = float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
    run.opt_d.step()
    run.opt_g.step()
    run.opt_d.zero_grad(set_to_none=True)
    run.opt_g.zero_grad(set_to_none=True)
    run.ema.update(run.student_unet)


def refresh(run: Run, shared: torch.Generator) -> None:
    """Re-initialise ~refresh_rate of the pool, dropping those heads' optimiser state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(2**31, (1,), generator=shared)))
        reborn = run.pool.refresh(run.cfg.refresh_rate, shared)
    for i in reborn:
        reset_optimizer_state(getattr(run.opt_d, "optimizer", run.opt_d), run.pool.heads[i])
    run.diagnostics.observe_refresh(run.ages[reborn].tolist())
    run.ages += 1
    run.ages[reborn] = 0


def record(run: Run, done: int, stats: dict, bar, g_loss: torch.Tensor) -> None:
    """Scalars, the progress bar, sample grids and checkpoints at their intervals."""
    cfg = run.cfg
    if run.stage == "adversarial":
        alarm = run.diagnostics.end_step(done)
        if alarm and run.acc.is_main_process:
            (bar.write if bar is not None else log.warning)(f"warning: {alarm}")
    stats["head_age/mean"], stats["head_age/max"] = float(run.ages.float().mean()), float(run.ages.max())
    if run.on_step is not None:
        run.on_step(done, stats)
    if run.writer is not None and (done % cfg.log_every == 0 or done == cfg.max_steps):
        for key, value in {**stats, **run.diagnostics.scalars()}.items():
            run.writer.add_scalar(key, value, done)
    if bar is not None:
        if run.stage == "first":
            bar.set_postfix(stage="first", mse=f"{float(g_loss.detach()):.4f}")
        else:
            rows = run.diagnostics.per_timestep()
            acc = np.mean([r["acc"] for r in rows.values()]) if rows else float("nan")
            bar.set_postfix(
                d=f"{np.mean([v for k, v in stats.items() if k.startswith('loss_d/')]):.3f}",
                g=f"{float(g_loss.detach()):.3f}",
                d_acc=f"{acc:.2f}",
                k=stats["student_steps"],
            )
        bar.update(1)
    if done % cfg.sample_every == 0 or done == cfg.max_steps:
        _sample_grid(run, done)
    if done % cfg.checkpoint_every == 0 or done == cfg.max_steps:
        _check_ranks_agree(run.acc, run.student_unet, run.pool)
        if run.acc.is_main_process:
            summary = json.dumps(run.diagnostics.summary(done), indent=2)
            checkpoint.save(
                run.out / "checkpoints",
                done,
                run.student_unet,
                run.ema,
                run.pool,
                run.opt_g,
                run.opt_d,
                run.ages,
                cfg.to_dict(),
                cfg.keep_checkpoints,
                extra={"diagnostics.json": summary},
            )
            run.diagnostics.write(run.out / "diagnostics.json", done)


def finish(run: Run) -> Path:
    """Write the student (EMA weights) as a diffusers pipeline folder; returns it."""
    run.acc.wait_for_everyone()
    result = run.out / "student"
    if run.acc.is_main_process:
        write_student_pipeline(run.source.path, result, run.student_unet, run.ema, run.cfg.shift)
    if run.writer is not None:
        run.writer.close()
    run.acc.wait_for_everyone()
    return result


# ---------------------------------------------------------------- helpers


def _check_ranks_agree(acc, student_unet, pool) -> None:
    """Every rank must hold the same student and heads; a divergence is a bug, so stop loudly."""
    if acc.num_processes == 1:
        return
    sums = torch.stack([sum(p.detach().double().sum() for p in m.parameters()) for m in (student_unet, pool)])
    gathered = acc.gather(sums.to(acc.device)).view(acc.num_processes, 2)
    if not bool((gathered == gathered[0]).all()):
        raise RuntimeError(f"ranks disagree on weights (student, heads) checksums: {gathered.tolist()}")


def _stage(run: Run, stage: str) -> None:
    """Set the student's optimiser up for `stage`. Entering the adversarial stage after a first
    stage drops the regression's Adam moments: the adversarial gradients are another signal.
    Re-applied every step, so a run resumed in either stage trains with that stage's settings."""
    cfg = run.cfg
    lr, betas = (cfg.lr_first_stage, FIRST_STAGE_BETAS) if stage == "first" else (cfg.lr_student, tuple(cfg.adam_betas))
    opt = getattr(run.opt_g, "optimizer", run.opt_g)
    if run.stage == "first" and stage == "adversarial":
        opt.state.clear()
    for group in opt.param_groups:
        group["lr"], group["betas"] = lr, betas
    run.stage = stage


def _no_sync(run: Run, sync: bool):
    """DDP's no_sync while accumulating (gradients are all-reduced on the last micro-batch only)."""
    return run.acc.no_sync(run.student) if not sync and run.world > 1 else contextlib.nullcontext()


@contextlib.contextmanager
def _tf32(enabled: bool):
    """TF32 matmuls on CUDA for the run, and the caller's setting back afterwards."""
    if not torch.cuda.is_available():
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def _adamw(params, **settings) -> torch.optim.Optimizer:
    """AdamW with the fused kernel where the device has one: the pool is thousands of small tensors
    (2,520 for the shapes UNet), and the per-tensor loop cost more than the heads' own maths."""
    params = list(params)
    try:
        return torch.optim.AdamW(params, fused=True, **settings)
    except (RuntimeError, ValueError):  # a device without the fused kernel
        return torch.optim.AdamW(params, **settings)


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


def real_and_fake_features(run: Run, real: torch.Tensor, fake: torch.Tensor, t: torch.Tensor, conds: dict) -> dict:
    """{conditioning name: the backbone's maps of real and fake stacked (real first), level by level}:
    batched, one backbone call for both sides; the reference, one call per side."""
    if run.cfg.batched_discriminator:
        twice = {c: {k: torch.cat([v] * 2) for k, v in cd.items()} for c, cd in conds.items()}
        return _features(run, torch.cat([real, fake]), torch.cat([t] * 2), twice)
    sides = [_features(run, x, t, conds) for x in (real, fake)]
    return {c: [torch.cat(pair) for pair in zip(sides[0][c], sides[1][c])] for c in conds}


def _features(run: Run, x: torch.Tensor, t: torch.Tensor, conds: dict) -> dict:
    """{conditioning name: the backbone's maps, level by level} for samples x at timesteps t. Batched,
    every conditioning runs in one backbone call (the samples repeated); unbatched, one call each."""
    if not run.cfg.batched_discriminator or len(conds) == 1:
        return {c: run.backbone(x, t, **unet_kwargs(cd)) for c, cd in conds.items()}
    names, n = list(conds), len(x)
    stacked = {k: torch.cat([conds[c][k] for c in names]) for k in conds[names[0]]}
    levels = run.backbone(torch.cat([x] * len(names)), torch.cat([t] * len(names)), **unet_kwargs(stacked))
    return {c: [f[i * n : (i + 1) * n] for f in levels] for i, c in enumerate(names)}


def _judge(pool, picks, view: Judging, features, fraction, batched: bool = True) -> dict:
    """{(t*, task): [logit maps (samples at t*, heads, h, w), level by level]}: each head reads its
    level, for the samples at its t*, whole for global heads and the shared crop window for local
    heads. Batched, the heads of one level and kind (global or local) run as one grouped call over
    every t* and task (heads.run_heads); unbatched, one after another (the reference)."""
    jobs: dict[tuple[int, bool], list] = {}  # (level, local) -> [((t*, task), input, head ids)]
    for t, by_task in picks.items():
        rows = view.t_batch == t
        for task, ids in by_task.items():
            local = task != "global_cond"
            by_level: dict[int, list[int]] = {}
            for i in ids:
                by_level.setdefault(pool.slots[i].level, []).append(i)
            for level, level_ids in by_level.items():
                x = features[_cond(task)][level][rows]
                x = crop(x, fraction, view.corner) if local else x
                jobs.setdefault((level, local), []).append(((t, task), x, level_ids))
    out: dict[tuple[int, str], list[torch.Tensor]] = {}
    for group in jobs.values():
        if batched:
            maps = run_heads(pool, [(x, ids) for _, x, ids in group])
        else:
            maps = [torch.cat([pool.heads[i](x) for i in ids], dim=1) for _, x, ids in group]
        for (key, _, _), m in zip(group, maps):
            out.setdefault(key, []).append(m)
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
def _sample_grid(run: Run, step: int) -> None:
    """1-step samples of the EMA student from fixed noise, as a PNG row and a TensorBoard image."""
    if not run.acc.is_main_process:
        return
    from PIL import Image

    cfg, device, dims, params = run.cfg, run.device, run.dims, run.source.params
    prompts = list(cfg.sample_prompts)
    cond = run.conditioner(prompts, device)
    noise = fixed_noise(cfg.seed, (len(prompts), *dims.latent_shape)).to(device)
    unet = run.student_unet
    gen = Generator(unet, params, dims.architecture == "sdxl").to(device)
    extra = {k: cond[k] for k in ("text_embeds", "time_ids") if k in cond}
    t = torch.full((len(prompts),), int(params.generator_timesteps(1)[0]), dtype=torch.int64, device=device)
    was_training = unet.training
    unet.eval()
    with run.ema.applied(unet):
        latents = gen(noise, t, cond["encoder_hidden_states"].float(), **{k: v.float() for k, v in extra.items()})[0]
    unet.train(was_training)
    images = run.vae_decoder.to(device)(latents)[0].float().cpu()  # (B, 3, H, W) in [0, 1]
    row = torch.cat(list(images), dim=2)
    (run.out / "samples").mkdir(parents=True, exist_ok=True)
    Image.fromarray((row.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(
        run.out / "samples" / f"step_{step:08d}.png"
    )
    if run.writer is not None:
        run.writer.add_image("samples/ema_1step", row, step)


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
    config = {
        "_class_name": "LCMScheduler",
        **{k: sched[k] for k in keep if k in sched},
        "original_inference_steps": 4,
        "shifted_timestep": int(shift),
        "timestep_scaling": 10.0,
    }
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
