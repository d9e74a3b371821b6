"""The small real experiment (and the embedded default model's recipe), on 2 CPU cores.

    python -m nitro_edge.training.recipes.shapes --out runs/shapes

1. Render a captioned dataset of coloured shapes; train a small VAE and an epsilon-prediction
   teacher UNet on it (frozen random CLIP text tower for conditioning, 10% prompt dropout).
2. Precompute a teacher cache (25 DDIM steps, CFG 3). For every seed: the first stage
   (regression of the one-step x̂0 onto the teacher's x0), then, from that one-step student, the
   adversarial stage as published (adversarial loss only) and its ablations at the same budget: one
   candidate per slot instead of a pool; no refresh; global heads only; no unconditional local heads.
   Every run uses `nitro-edge train`'s defaults except the teacher, batch size and step counts.
3. Train an attribute classifier on real renders; report, per row, the mean and spread over seeds
   of the Fréchet distance to the teacher's 25-step samples in its features, and of prompt
   adherence (its accuracy: colour, shape and position all right), 480 samples per seed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from importlib import resources
from multiprocessing import get_context
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from nitro_edge.training.recipes import shapes_data as data
from nitro_edge.training.recipes import small_models as sm

TEACHER_STEPS, TEACHER_GUIDANCE = 25, 3.0
# The package's assets, found through importlib.resources so that an installed wheel finds them too
# (a path relative to this file points into the checkout's layout, not site-packages').
ASSETS = Path(str(resources.files("nitro_edge").joinpath("assets")))
DEFAULT_MODEL_DIR = ASSETS / "default_model"  # where --install-default puts the model by default
BATCH_SIZE = 16
REFERENCE_SEED = 100  # the teacher's 25-step reference samples; rows sample from EVAL_SEED + seed
EVAL_SEED = 1000
STUDENT_STEPS = (1, 2, 4)  # every student is scored at these step counts (one set of weights)
FULL = "NitroFusion (full)"
ABLATIONS = {  # adversarial-stage variants, each from the same first-stage student
    FULL: {},
    "one candidate per slot (no pool)": {"pool_size": 12},  # 4 t* x 3 tasks: one head per slot
    "no refresh": {"refresh_rate": 0.0},
    "global heads only": {"tasks": ["global_cond"]},
    "no unconditional local heads": {"tasks": ["global_cond", "local_cond"]},
    # Not an ablation: the paper's bottom-up refinement (2, 3, 4 steps opened at 0, 1/4, 1/2 of the
    # adversarial steps; training.config.refine_schedule), which the defaults leave off.
    "bottom-up refinement to 4 steps": {"refine_starts": "schedule"},
}
PAPER = {  # what the paper says of each ablation (qualitative only; METHOD.md)
    "one candidate per slot (no pool)": "lower sharpness",
    "no refresh": "artifacts and over-fitting",
    "global heads only": "Janus artifacts, lost detail (without multi-scale dual-objective heads)",
    "no unconditional local heads": "Janus repetitions (what those heads fight)",
    "bottom-up refinement to 4 steps": "one set of weights for 1-4 steps, quality rising with steps",
}


class Size(NamedTuple):
    dataset: int  # rendered training images for the VAE and the teacher
    vae_steps: int
    teacher_steps: int  # the teacher UNet's training iterations
    cache: int  # teacher-cache samples
    first_stage: int  # first-stage iterations
    adversarial: int  # adversarial-stage iterations
    per_class: int  # evaluation samples per class (60 classes)
    seeds: int
    classifier_data: int
    classifier_steps: int


SIZES = {
    "full": Size(6000, 1000, 3000, 4096, 3000, 100, 8, 3, 3000, 1500),
    "quick": Size(128, 4, 4, 32, 2, 2, 1, 1, 120, 4),
}


def build_teacher(out: Path, size, log) -> Path:
    """Train VAE and teacher UNet; save a StableDiffusionPipeline folder."""
    from nitro_edge.tiny import build_tiny_pipeline

    n, vae_steps, unet_steps = size[0], size[1], size[2]
    images, prompts, _ = data.make(n, seed=0)
    folder = out / "teacher"
    if (folder / "model_index.json").is_file():
        log(f"teacher exists: {folder}")
        return folder
    tmp = out / ".teacher.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    build_tiny_pipeline("sd15", tmp, seed=0)  # tokenizer + frozen random CLIP text tower (hidden 32)
    with torch.random.fork_rng(devices=[]):  # seeded inits; the caller's global generator left as it was
        torch.manual_seed(0)
        _train_teacher(tmp, images, prompts, n, vae_steps, unet_steps, log)
    tmp.rename(folder)
    return folder


def teacher_vae():
    """The teacher's VAE, freshly initialised (also what benchmarks/adversarial_step.py times)."""
    import diffusers

    return diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 32, 32, 32),
        layers_per_block=1,
    )


def teacher_unet():
    """The teacher's UNet (SD1.5 layout, 32/64 channels), freshly initialised."""
    import diffusers

    return diffusers.UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=16,
    )


def teacher_scheduler():
    """The teacher's sampler: DDIM over the SD schedule."""
    import diffusers

    return diffusers.DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        timestep_spacing="trailing",
        clip_sample=False,
        set_alpha_to_one=False,
    )


def _train_teacher(tmp: Path, images, prompts, n: int, vae_steps: int, unet_steps: int, log) -> None:
    import diffusers
    import transformers

    vae = teacher_vae()
    vae = sm.train_vae(vae, images, vae_steps, log=log)
    with torch.no_grad():
        latents = torch.cat([vae.encode(sm.to_tensor(images[i : i + 256])).latent_dist.mean for i in range(0, n, 256)])
    scaling = float(1 / latents.std())
    vae.register_to_config(scaling_factor=scaling)
    latents = latents * scaling
    tokenizer = transformers.CLIPTokenizer.from_pretrained(str(tmp / "tokenizer"))
    text_encoder = transformers.CLIPTextModel.from_pretrained(str(tmp / "text_encoder"))
    unique = sorted(set(prompts)) + [""]
    with torch.no_grad():
        ids = tokenizer(unique, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        table = dict(zip(unique, text_encoder(ids)[0]))
    cond = torch.stack([table[p] for p in prompts])
    unet = teacher_unet()
    scheduler = teacher_scheduler()
    unet = sm.train_epsilon(unet, latents, cond, table[""], scheduler.alphas_cumprod, unet_steps, log=log)
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(tmp))


@torch.no_grad()
def teacher_images(teacher: Path, prompts: list[str], steps: int, seed: int) -> np.ndarray:
    """The teacher's own sampler (DDIM with CFG), decoded: uint8 (N, H, W, 3)."""
    from nitro_edge.models.loading import load_modules
    from nitro_edge.sources import resolve_source
    from nitro_edge.training.teacher import Conditioner, TeacherSampler

    dims, toks, mods = load_modules(resolve_source(teacher))
    conditioner = Conditioner(toks, [mods["text_encoder"]], dims)
    sampler = TeacherSampler(mods["generator"].unet, teacher, steps, TEACHER_GUIDANCE)
    empty = conditioner([""], "cpu")
    out = []
    for i in range(0, len(prompts), 120):
        batch = prompts[i : i + 120]
        noise = torch.from_numpy(
            np.random.default_rng([seed, i]).standard_normal((len(batch), *dims.latent_shape), dtype=np.float32)
        )
        uncond = {k: v.expand(len(batch), *v.shape[1:]) for k, v in empty.items()}
        x0 = sampler(noise, conditioner(batch, "cpu"), uncond)
        out.append(mods["vae_decoder"](x0)[0].permute(0, 2, 3, 1).numpy())
    return (np.concatenate(out) * 255).round().astype(np.uint8)


def student_images(student: Path, prompts: list[str], steps: int, seed: int) -> np.ndarray:
    import nitro_edge

    sampler = nitro_edge.load(student, backend="torch")
    out = [
        sampler.generate(prompts[i : i + 120], steps=steps, seed=seed + i, output="numpy")
        for i in range(0, len(prompts), 120)
    ]
    return (np.concatenate(out) * 255).round().astype(np.uint8)


def _config(teacher: Path, out: Path, run: Path, seed: int, **settings):
    """A run's config: `nitro-edge train`'s defaults, plus the teacher, batch size and step counts."""
    from nitro_edge.training.config import load_config

    base = dict(
        teacher=str(teacher),
        prompts=str(out / "prompts.txt"),
        output=str(run),
        teacher_steps=TEACHER_STEPS,
        teacher_guidance=TEACHER_GUIDANCE,
        teacher_cache=str(out / "teacher-cache"),
        batch_size=BATCH_SIZE,
        seed=seed,
        log_every=10,
    )
    steps = settings["max_steps"]
    base.update(checkpoint_every=max(1, steps // 2), sample_every=max(1, steps // 4))
    return load_config(None, {**base, **settings})


def precompute_cache(teacher: Path, out: Path, size: Size, log) -> None:
    from nitro_edge.training.plan import precompute

    (out / "prompts.txt").write_text("\n".join(data.prompt(*c) for c in data.CLASSES) + "\n")
    index = out / "teacher-cache" / "index.json"
    if index.is_file() and json.loads(index.read_text())["complete_samples"] >= size.cache:
        return
    log(f"precomputing {size.cache} teacher samples ({TEACHER_STEPS} DDIM steps, CFG {TEACHER_GUIDANCE})")
    t0 = time.perf_counter()
    precompute(_config(teacher, out, out / "runs" / "cache", 0, max_steps=1), size.cache, shard_size=256)
    log(f"teacher cache: {size.cache / (time.perf_counter() - t0):.1f} samples/s")


def slug(name: str) -> str:
    return name.split(" (")[0].replace(" ", "-")


def _job(kind: str, teacher: Path, out: Path, name: str, seed: int, size: Size, threads: int, prompts, steps):
    """One run in a worker process: train (or resume a finished run), then sample the eval prompts.
    Returns (kind, name, seed, student folder, {steps: images}, seconds of training)."""
    from nitro_edge.training.train import train

    torch.set_num_threads(threads)
    if kind == "first":
        run = out / "runs" / f"first-stage-seed{seed}"
        cfg = _config(teacher, out, run, seed, max_steps=size.first_stage, first_stage_steps=size.first_stage)
    else:
        first = out / "runs" / f"first-stage-seed{seed}" / "student" / "unet" / "diffusion_pytorch_model.safetensors"
        run = out / "runs" / f"{slug(name)}-seed{seed}"
        settings = dict(max_steps=size.adversarial, student_unet=str(first), shift=1000, first_stage_steps=0)
        variant = dict(ABLATIONS[name])
        if variant.get("refine_starts") == "schedule":
            from nitro_edge.training.config import refine_schedule

            variant["refine_starts"] = refine_schedule(0, size.adversarial)
        cfg = _config(teacher, out, run, seed, **{**settings, **variant})
    t0 = time.perf_counter()
    student = train(cfg, progress=False)  # a finished run resumes at its end and only rewrites student/
    seconds = time.perf_counter() - t0
    images = {k: student_images(student, prompts, k, EVAL_SEED + seed) for k in steps}
    diagnostics = run / "diagnostics.json"
    share = json.loads(diagnostics.read_text())["state_share"] if kind != "first" else None
    return kind, name, seed, student, images, seconds, share


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/shapes"))
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--seeds", type=int, help="training seeds per row (default: the size's)")
    parser.add_argument("--ablations", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--workers", type=int, default=min(2, os.cpu_count() or 1), help="runs in parallel, one thread each"
    )
    parser.add_argument(
        "--install-default",
        nargs="?",
        const=DEFAULT_MODEL_DIR,
        type=Path,
        metavar="DIR",
        help="copy the full method's seed-0 student into DIR (default: the package's embedded default "
        "model) and, for the package's, re-export the shipped bundle beside it",
    )
    args = parser.parse_args(argv)
    size = SIZES[args.size]
    seeds = list(range(args.seeds or size.seeds))
    if args.workers < 1 or not seeds:
        parser.error("--workers and --seeds must be at least 1")
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - started:6.0f} s] {msg}", flush=True)

    teacher = build_teacher(args.out, size, log)
    log(f"teacher ready ({time.perf_counter() - started:.0f} s)")
    images, _, labels = data.make(size.classifier_data, seed=1)
    classifier = sm.train_classifier(images, labels, size.classifier_steps, log=log)
    prompts, want = data.eval_prompts(size.per_class)
    _, real_pred = sm.classify(classifier, images)
    log(f"classifier accuracy on its training renders: {np.mean((real_pred == labels).all(1)):.3f}")
    reference = teacher_images(teacher, prompts, TEACHER_STEPS, seed=REFERENCE_SEED)
    ref_feats, _ = sm.classify(classifier, reference)
    scores: dict[str, list[dict]] = {}

    def score(row, imgs, seed):
        feats, pred = sm.classify(classifier, imgs)
        fd, acc = sm.frechet_distance(feats, ref_feats), float(np.mean((pred == want).all(1)))
        attrs = {a: float(np.mean(pred[:, i] == want[:, i])) for i, a in enumerate(("colour", "shape", "position"))}
        scores.setdefault(row, []).append({"seed": seed, "fd_to_teacher": fd, "adherence": acc, **attrs})
        log(f"{row}, seed {seed}: FD {fd:.3f}, adherence {acc:.3f}")

    grid = {"teacher": reference}
    for seed in seeds:
        for steps in (TEACHER_STEPS, 1):
            imgs = teacher_images(teacher, prompts, steps, seed=EVAL_SEED + seed)
            score(f"teacher {steps} step{'s' if steps > 1 else ''}", imgs, seed)
            grid.setdefault(f"teacher {steps}", imgs)
    log(f"teacher rows done ({time.perf_counter() - started:.0f} s)")
    precompute_cache(teacher, args.out, size, log)

    variants = list(ABLATIONS) if args.ablations else [FULL]
    threads = 1 if args.workers > 1 else max(1, torch.get_num_threads())
    students, seconds, shares = {}, {}, {}
    ctx = get_context("spawn")  # workers start clean: no OpenMP state forked from this process
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=ctx) as pool:
        common = (teacher, args.out)
        pending = {
            pool.submit(_job, "first", *common, "first stage", s, size, threads, prompts, STUDENT_STEPS) for s in seeds
        }
        while pending:
            done = next(as_completed(pending))
            pending.remove(done)
            kind, name, seed, student, imgs, secs, share = done.result()
            seconds.setdefault(name, []).append(secs)
            if share is not None:
                shares.setdefault(name, []).append(share)
            students[(name, seed)] = student
            log(f"{name}, seed {seed}: trained in {secs:.0f} s")
            for k, im in imgs.items():
                row = f"student {k} step{'s' if k > 1 else ''}: {name}"
                score(row, im, seed)
                if seed == 0 and (name == FULL or kind == "first"):
                    grid[row] = im
            if kind == "first":
                for v in variants:
                    pending.add(
                        pool.submit(_job, "adversarial", *common, v, seed, size, threads, prompts, STUDENT_STEPS)
                    )
    rows = [_summarise(row, values, PAPER.get(row.split(": ", 1)[-1], "")) for row, values in _ordered(scores)]
    result = {
        "rows": rows,
        "size": args.size,
        "budget": {"first_stage_steps": size.first_stage, "adversarial_steps": size.adversarial, "batch": BATCH_SIZE},
        "seeds": seeds,
        "samples_per_row_and_seed": len(prompts),
        "training_seconds": {k: round(float(np.median(v))) for k, v in seconds.items()},
        # the heads' verdicts over each adversarial run, averaged over seeds (training/diagnostics.py)
        "diagnostics_share": {
            k: {s: round(float(np.mean([x[s] for x in v])), 3) for s in v[0]} for k, v in shares.items()
        },
        "seconds": round(time.perf_counter() - started),
        "workers": args.workers,
    }
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    _save_grid(args.out / "grid.png", list(grid.values()), per_class=size.per_class)
    table = markdown_table(rows)
    (args.out / "results.md").write_text(table + "\n")
    print(table)
    if args.install_default:
        install_default(students[(FULL, 0)], args.install_default, result)
        log(f"installed the default model in {args.install_default}")
        if args.install_default.resolve() == DEFAULT_MODEL_DIR.resolve():
            from nitro_edge.default_model import build_shipped_bundle

            build_shipped_bundle()
            log("re-exported the shipped default bundle")
    log(f"done; results in {args.out}/results.json, grid in {args.out}/grid.png")
    return result


def _ordered(scores: dict) -> list:
    """Teacher rows, first stage, full method, then the ablations."""

    def key(item):
        row = item[0]
        for i, mark in enumerate(("teacher", ": first stage", f": {FULL}")):
            if mark in row:
                return (i, row)
        return (3, row)

    return sorted(scores.items(), key=key)


def _summarise(row: str, values: list[dict], paper: str) -> dict:
    out = {"model": row, "seeds": len(values), "paper": paper}
    for key in ("adherence", "fd_to_teacher", "colour", "shape", "position"):
        v = np.array([x[key] for x in values])
        out[key] = round(float(v.mean()), 3)
        out[f"{key}_sd"] = round(float(v.std(ddof=1)), 3) if len(v) > 1 else 0.0
    out["per_seed"] = [{k: round(v, 4) if isinstance(v, float) else v for k, v in x.items()} for x in values]
    return out


def markdown_table(rows: list[dict]) -> str:
    head = (
        "| model | prompt adherence | FD to teacher (lower is closer) | colour / shape / position | paper's claim |\n"
    )
    head += "|---|---|---|---|---|\n"
    return head + "\n".join(
        f"| {r['model']} | {r['adherence']:.3f} ± {r['adherence_sd']:.3f} | {r['fd_to_teacher']:.3f} ± "
        f"{r['fd_to_teacher_sd']:.3f} | {r['colour']:.2f} / {r['shape']:.2f} / {r['position']:.2f} | {r['paper']} |"
        for r in rows
    )


def _save_grid(path: Path, rows: list[np.ndarray], per_class: int, columns: int = 12) -> None:
    from PIL import Image

    picks = [r[::per_class][:columns] for r in rows]  # one image per class, first classes
    grid = np.concatenate([np.concatenate(list(r), axis=1) for r in picks], axis=0)
    Image.fromarray(grid).save(path)


def install_default(student: Path, dest: Path, results: dict) -> Path:
    """Copy the distilled student into `dest` as the embedded default model (fp16 weights)."""
    import diffusers
    import transformers

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in ("model_index.json",):
        shutil.copy2(student / name, tmp / name)
    shutil.copytree(student / "scheduler", tmp / "scheduler")
    shutil.copytree(student / "tokenizer", tmp / "tokenizer")
    for sub, cls in (
        ("unet", diffusers.UNet2DConditionModel),
        ("vae", diffusers.AutoencoderKL),
        ("text_encoder", transformers.CLIPTextModel),
    ):
        cls.from_pretrained(str(student / sub)).half().save_pretrained(str(tmp / sub))
    budget = results["budget"]
    (tmp / "README.md").write_text(
        MODEL_CARD.format(
            rows=markdown_table(results["rows"]),
            seconds=results["seconds"],
            seeds=len(results["seeds"]),
            samples=results["samples_per_row_and_seed"],
            **budget,
        )
    )
    shutil.copy2(
        ASSETS / "clip_bpe" / "LICENSE.open_clip",
        tmp / "tokenizer" / "LICENSE.open_clip",
    )
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest


MODEL_CARD = """# nitro-shapes-64: the embedded default model

A one-step text-to-image model (64x64 pixels) for coloured shapes at positions, e.g.
"a red circle at the top left" (colours: red, green, blue, yellow; shapes: circle, square,
triangle; positions: top left, top right, bottom left, bottom right, centre).

- Architecture: SD1.5 layout at small size: CLIP text tower (hidden 32, random and frozen, real
  CLIP BPE vocabulary), UNet (32/64 channels, 8x8 latents), AutoencoderKL (4 blocks, 8x).
- Training: VAE and teacher UNet trained from scratch on a procedurally rendered dataset (epsilon
  prediction, 3000 steps); student distilled from the teacher (25 DDIM steps, CFG 3) with
  nitro-edge's trainer at its defaults: first stage (regression of the one-step x0 onto the
  teacher's, {first_stage_steps} steps), then NitroFusion's adversarial stage ({adversarial_steps} steps), batch {batch};
  EMA weights. Timestep shift 1000 (the student starts from the teacher's own UNet).
- Weights stored in fp16 (safetensors); loaded as fp32.
- Reproduce: `make default-model` (the run that made these weights took {seconds} s on 2 CPU cores,
  all rows, plus the teacher's training when it is not already in the output folder).
- Licence: Apache-2.0, like nitro-edge. The tokenizer vocabulary is OpenAI CLIP's BPE, taken from
  open_clip_torch (MIT, notice in tokenizer/LICENSE.open_clip). No third-party images or weights.

## Measured quality (from the run that produced these weights)

Prompt adherence (an attribute classifier gets colour, shape and position all right) and Fréchet
distance to the teacher's 25-step samples in that classifier's features; mean ± standard deviation
over {seeds} training seed(s), {samples} samples per seed (every class equally often). These weights are seed 0's.

{rows}
"""


if __name__ == "__main__":
    main()
