"""`make demo`: export a model, generate the same prompts on every available backend, write a
grid PNG and print a table (backend, precision, steps, latency, PSNR against torch).

Until the embedded default model exists, the model is a tiny SD1.5-architecture pipeline with
random weights: the images are noise-like, and the demo proves the chain, not image quality.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import numpy as np

PROMPTS = ["a red circle at the top left", "a blue square at the bottom right", "a green triangle in the centre"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo-output"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import nitro_edge
    from nitro_edge.export import export_bundle
    from nitro_edge.export.parity import psnr_db
    from nitro_edge.tiny import build_tiny_pipeline
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print("[yellow]No embedded default model yet: using the tiny SD1.5-architecture test model "
                  "(random weights, 64x64), so images are noise; this shows the chain works.[/yellow]")
    source = args.out / "tiny-sd15"
    if not (source / "model_index.json").is_file():
        build_tiny_pipeline("sd15", source)
    bundle = args.out / "bundle"
    started = time.perf_counter()
    export_bundle(source, bundle, targets=["onnx"], precision="fp32", shift=500,
                  report=lambda m: console.log(m))
    console.print(f"exported in {time.perf_counter() - started:.1f} s")

    runs = [("torch", "fp32", source, {"shift": 500})]
    if importlib.util.find_spec("onnxruntime"):
        runs.append(("onnx", "fp32", bundle, {}))
    table = Table("backend", "precision", "steps", "latency (s, median of 3)", "PSNR vs torch (dB)")
    rows, reference = [], {}
    for backend, precision, model, kwargs in runs:
        sampler = nitro_edge.load(model, backend, **kwargs)
        for steps in (1, 4):
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                images = sampler.generate(PROMPTS, steps=steps, seed=args.seed, output="numpy")
                times.append(time.perf_counter() - t0)
            reference.setdefault(steps, images)
            table.add_row(backend, precision, str(steps), f"{np.median(times):.3f}",
                          f"{psnr_db(reference[steps], images):.1f}")
            rows.append(images)
    console.print(table)
    grid = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
    from PIL import Image

    path = args.out / "grid.png"
    Image.fromarray((grid * 255).round().astype(np.uint8)).save(path)
    console.print(f"grid ({len(rows)} rows: backend x steps; columns: prompts): {path}")


if __name__ == "__main__":
    main()
