"""What one adversarial step costs at the shapes recipe's size, phase by phase, batched against the
reference path (one backbone call per input, one call per head).

    python benchmarks/adversarial_step.py --out runs/adversarial-step
    python benchmarks/adversarial_step.py --out runs/adversarial-step --teacher runs/shapes/teacher
    python benchmarks/adversarial_step.py --out runs/adversarial-step --whole-only   # also on older checkouts

The teacher is the recipe's architecture (SD1.5 layout, 32/64-channel UNet, 8x8 latents) with random
weights unless --teacher names one; the step reads a small teacher cache, as the recipe's runs do.
Every row uses `nitro-edge train`'s defaults (480-head pool, every candidate trained) at the
recipe's batch of 16, a one-step student (k = 1) and one thread, as each recipe worker runs.
- whole step: `train()` itself, the median of --steps iterations after two warm-up steps;
- phases, each timed alone on the same inputs (median of --repeats): the student (one-step sample,
  forward and backward), the backbone (the discriminator's features of real and fake without
  gradient, the generator's with gradient back to the student's x0) and the heads (the
  discriminator's judgement with its loss's backward, and the generator's through frozen heads).
Prints a table and writes OUT/results.json. Measure alone on the machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time
from pathlib import Path

import torch

BATCH = 16


def random_teacher(folder: Path) -> Path:
    """The shapes recipe's teacher architecture with random weights, as a pipeline folder."""
    if (folder / "model_index.json").is_file():
        return folder
    import diffusers
    import transformers

    from nitro_edge.tiny import build_tiny_pipeline
    from nitro_edge.training.recipes import shapes

    build_tiny_pipeline("sd15", folder, seed=0)  # tokenizer and text tower, replaced parts below
    torch.manual_seed(0)
    pipe = diffusers.StableDiffusionPipeline(
        vae=shapes.teacher_vae(),
        text_encoder=transformers.CLIPTextModel.from_pretrained(str(folder / "text_encoder")),
        tokenizer=transformers.CLIPTokenizer.from_pretrained(str(folder / "tokenizer")),
        unet=shapes.teacher_unet(),
        scheduler=shapes.teacher_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(folder))
    return folder


def config(teacher: Path, out: Path, name: str, steps: int, **settings):
    from nitro_edge.training.config import load_config
    from nitro_edge.training.recipes import shapes_data

    prompts = out / "prompts.txt"
    prompts.write_text("\n".join(shapes_data.prompt(*c) for c in shapes_data.CLASSES) + "\n")
    base = dict(
        teacher=str(teacher),
        prompts=str(prompts),
        output=str(out / name),
        teacher_cache=str(out / "cache"),
        batch_size=BATCH,
        max_steps=steps,
        first_stage_steps=0,
        checkpoint_every=10**6,
        sample_every=10**6,
        log_every=10**6,
    )
    return load_config(None, {**base, **settings})


def whole_step(teacher: Path, out: Path, name: str, steps: int, **settings) -> float:
    """Median seconds of a training iteration, after two warm-up iterations."""
    from nitro_edge.training.train import train

    stamps: list[float] = []

    class Done(Exception):
        pass

    def on_step(step: int, stats: dict) -> None:
        stamps.append(time.perf_counter())
        if len(stamps) == steps + 2:
            raise Done

    try:
        train(config(teacher, out, name, steps + 10, **settings), progress=False, on_step=on_step)
    except Done:
        pass
    return statistics.median(b - a for a, b in zip(stamps[1:], stamps[2:]))


def phases(teacher: Path, out: Path, repeats: int) -> dict:
    """{mode: {phase: median seconds}} for the batched and the reference path, on the same Run."""
    from nitro_edge.training import train as loop
    from nitro_edge.training.losses import PER_HEAD, discriminator_loss, generator_loss
    from nitro_edge.training.student import add_noise, student_sample

    run = loop.setup(config(teacher, out, "phases", 1))
    gen = torch.Generator().manual_seed(0)
    batch = loop.data_batch(run, 0, gen)
    t_per_sample, picks = run.pool.select_all(gen, BATCH, run.pool.candidates)
    view = loop.Judging.draw(run, batch, t_per_sample, gen)
    conds = loop._conds(run.pool, batch.cond, batch.uncond)
    params, alphas = run.source.params, run.alphas
    with torch.no_grad():
        fake = student_sample(run.student, batch.noise, batch.cond, params, 1, alphas, gen)
    real_noisy, fake_noisy = (add_noise(x, view.eps, view.t_batch, alphas) for x in (batch.real, fake))

    def student():
        x = student_sample(run.student, batch.noise, batch.cond, params, 1, alphas, gen)
        x.square().mean().backward()

    def backbone():
        with torch.no_grad():
            loop.real_and_fake_features(run, real_noisy, fake_noisy, view.t_batch, conds)
        x = fake_noisy.clone().requires_grad_(True)
        feats = loop._features(run, x, view.t_batch, conds)
        sum(f.mean() for maps in feats.values() for f in maps).backward()

    with torch.no_grad():
        seen = loop.real_and_fake_features(run, real_noisy, fake_noisy, view.t_batch, conds)
        seen_fake = loop._features(run, fake_noisy, view.t_batch, conds)

    def heads():
        judged = loop._judge(
            run.pool, picks, view.doubled(), seen, run.cfg.local_fraction, run.cfg.batched_discriminator
        )
        d = 0.0
        for (t, _), maps in judged.items():
            n = int((view.t_batch == t).sum())
            d = d + torch.cat([discriminator_loss(m[:n], m[n:], "hinge", PER_HEAD) for m in maps]).mean()
        d.backward()
        run.pool.requires_grad_(False)
        feats = {c: [f.clone().requires_grad_(True) for f in maps] for c, maps in seen_fake.items()}
        logits = loop._judge(run.pool, picks, view, feats, run.cfg.local_fraction, run.cfg.batched_discriminator)
        sum(
            torch.cat([generator_loss(m, "hinge", PER_HEAD) for m in maps]).mean() for maps in logits.values()
        ).backward()
        run.pool.requires_grad_(True)

    results = {}
    for mode, batched in (("batched", True), ("reference", False)):
        run.cfg = dataclasses.replace(run.cfg, batched_discriminator=batched)
        results[mode] = {}
        for name, fn in (("student", student), ("backbone", backbone), ("heads", heads)):
            fn()  # warm-up
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
                run.student_unet.zero_grad(set_to_none=True)
                run.pool.zero_grad(set_to_none=True)
            results[mode][name] = statistics.median(times)
    return results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/adversarial-step"))
    parser.add_argument("--teacher", type=Path, help="a pipeline folder (default: the recipe's architecture, random)")
    parser.add_argument("--steps", type=int, default=5, help="timed training iterations per whole-step row")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per phase")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (each recipe worker uses 1)")
    parser.add_argument("--whole-only", action="store_true", help="only the whole-step rows")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    teacher = args.teacher or random_teacher(args.out / "teacher")
    from nitro_edge.training.config import TrainConfig
    from nitro_edge.training.plan import precompute

    if not (args.out / "cache" / "index.json").is_file():
        precompute(config(teacher, args.out, "cache-run", 1, teacher_steps=4), 64, shard_size=64)
    has_switch = "batched_discriminator" in TrainConfig.__dataclass_fields__
    modes = {"batched": {"batched_discriminator": True}, "reference": {"batched_discriminator": False}}
    if not has_switch:
        modes = {"this checkout (no batched path)": {}}
    result: dict = {"cpu": _cpu(), "threads": args.threads, "batch": BATCH, "whole_step_s": {}}
    for mode, settings in modes.items():
        result["whole_step_s"][mode] = whole_step(teacher, args.out, f"whole-{mode.split()[0]}", args.steps, **settings)
        print(f"whole step, {mode}: {result['whole_step_s'][mode]:.3f} s", flush=True)
    if has_switch and not args.whole_only:
        result["phase_s"] = phases(teacher, args.out, args.repeats)
    print(table(result))
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    return result


def table(result: dict) -> str:
    rows = ["| path | whole step s | student s | backbone s | heads s |", "|---|---|---|---|---|"]
    for mode, whole in result["whole_step_s"].items():
        p = result.get("phase_s", {}).get(mode, {})
        cells = [f"{p[k]:.3f}" if k in p else "" for k in ("student", "backbone", "heads")]
        rows.append(f"| {mode} | {whole:.3f} | " + " | ".join(cells) + " |")
    w = result["whole_step_s"]
    if {"batched", "reference"} <= set(w):
        rows.append(
            f"\nbatched is {w['reference'] / w['batched']:.1f}x cheaper per step ({result['cpu']}, {result['threads']} thread(s))"
        )
    return "\n".join(rows)


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
