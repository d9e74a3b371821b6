"""One training variant on the shapes recipe's teacher, scored at 1, 2 and 4 steps: what the
bottom-up refinement table in docs/training.md was measured with.

    python -m nitro_edge.training.recipes.shapes --out runs/shapes          # teacher, cache, first stages
    python benchmarks/shapes_variant.py NAME --steps 400 --set lr_student=3e-5 refine_starts=[0,0,100,200]
    python benchmarks/shapes_variant.py first --first                        # the first-stage student alone
    python benchmarks/shapes_variant.py NAME --from-teacher --steps 3000 --set max_steps=3000 \\
        first_stage_steps=3000 refine_starts=[0,0,0,0]                       # a first stage with k from 1..4

By default a variant is an adversarial stage from the recipe's first-stage student of --seed, at
`nitro-edge train`'s defaults plus --set; it is scored on --per-class samples per class (120 by
default: quick, about ±0.03 in adherence) against the teacher's 25-step samples, as the recipe
scores. Appends one JSON line to OUT/variants.jsonl and prints it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from nitro_edge.training.recipes import shapes
from nitro_edge.training.recipes import shapes_data as data
from nitro_edge.training.recipes import small_models as sm


def evaluator(out: Path, per_class: int):
    """The recipe's classifier and the teacher's reference features, cached in OUT."""
    cache = out / f"variant-eval-{per_class}.pt"
    if cache.exists():
        return torch.load(cache, weights_only=False)
    images, _, labels = data.make(3000, seed=1)
    classifier = sm.train_classifier(images, labels, 1500)
    prompts, want = data.eval_prompts(per_class)
    reference = shapes.teacher_images(out / "teacher", prompts, shapes.TEACHER_STEPS, seed=shapes.REFERENCE_SEED)
    found = {
        "classifier": classifier,
        "reference": sm.classify(classifier, reference)[0],
        "prompts": prompts,
        "want": want,
    }
    torch.save(found, cache)
    return found


def score(out: Path, student: Path, seed: int, per_class: int) -> dict:
    """{steps: [adherence, FD to the teacher]} at 1, 2 and 4 steps."""
    ev = evaluator(out, per_class)
    result = {}
    for k in shapes.STUDENT_STEPS:
        images = shapes.student_images(student, ev["prompts"], k, shapes.EVAL_SEED + seed)
        feats, pred = sm.classify(ev["classifier"], images)
        adherence = float(np.mean((pred == ev["want"]).all(1)))
        result[k] = [round(adherence, 3), round(sm.frechet_distance(feats, ev["reference"]), 3)]
    return result


def main(argv=None) -> dict:
    from nitro_edge.training.config import load_config
    from nitro_edge.training.train import train

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name")
    parser.add_argument("--out", type=Path, default=Path("runs/shapes"), help="the recipe's output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=400, help="training iterations of the variant")
    parser.add_argument("--per-class", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--first", action="store_true", help="score the recipe's first-stage student only")
    parser.add_argument("--from-teacher", action="store_true", help="train from the teacher, not the first stage")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    first = args.out / "runs" / f"first-stage-seed{args.seed}" / "student"
    line: dict = {"name": args.name, "seed": args.seed, "steps": args.steps, "set": args.set}
    student = first
    if not args.first:
        run = args.out / "variants" / f"{args.name}-seed{args.seed}"
        start = (
            {} if args.from_teacher else {"student_unet": str(first / "unet" / "diffusion_pytorch_model.safetensors")}
        )
        start = start and {**start, "shift": 1000, "first_stage_steps": 0}
        cfg = shapes._config(args.out / "teacher", args.out, run, args.seed, max_steps=args.steps, **start)
        given = load_config(None, sets=args.set)
        cfg = dataclasses.replace(cfg, **{k.split("=")[0]: getattr(given, k.split("=")[0]) for k in args.set})
        t0 = time.perf_counter()
        student = train(cfg, progress=False)
        line["train_s"] = round(time.perf_counter() - t0)
        diagnostics = run / "diagnostics.json"
        if diagnostics.exists():
            d = json.loads(diagnostics.read_text())
            line["diagnostics"] = {"state_share": d["state_share"], "per_timestep": d["per_timestep"]}
    line["score"] = score(args.out, student, args.seed, args.per_class)
    print(json.dumps(line), flush=True)
    with open(args.out / "variants.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")
    return line


if __name__ == "__main__":
    main()
