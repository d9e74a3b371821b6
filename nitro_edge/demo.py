"""`make demo`: export the embedded default model to every target this platform supports, at
fp32, fp16 and int8; generate the same prompts on every available backend and precision; write
one grid PNG and print a table (backend, precision, latency, PSNR against torch)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

PROMPTS = [
    "a red circle at the top left",
    "a blue square in the centre",
    "a green triangle at the bottom right",
    "a yellow circle at the bottom left",
]
PRECISIONS = ("fp32", "fp16", "int8")
MORE_STEPS = (2, 4)  # extra torch rows: the same weights sampled in more steps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo-output"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--verbose", "-v", action="store_true", help="show the converters' own output too")
    args = parser.parse_args(argv)
    from nitro_edge.cli.quiet import captured

    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "export.log"
    log.unlink(missing_ok=True)
    with captured(log, args.verbose) as console:
        run(args, console, log)


def _once():
    """The demo's filter on export messages: parity results, and each warning once (the Core ML one
    would otherwise repeat for every precision)."""
    seen = set()

    def keep(message: str) -> bool:
        if message.startswith("warning:"):
            gist = message.split(":", 2)[-1].strip()
            if gist in seen:
                return False
            seen.add(gist)
            return True
        return "parity passed" in message

    return keep


def run(args, console, log: Path) -> None:
    from rich.table import Table

    import nitro_edge
    from nitro_edge import registry
    from nitro_edge.cli.quiet import Phases
    from nitro_edge.default_model import NAME, source_folder
    from nitro_edge.errors import ParityError
    from nitro_edge.export import export_bundle
    from nitro_edge.export.parity import psnr_db

    source = source_folder()
    console.print(f"model: the embedded default [bold]{NAME}[/bold] ({source})")
    targets = [t for t in registry.TARGETS if t.installed()]
    bundle = args.out / "bundle"
    if bundle.exists():
        import shutil

        shutil.rmtree(bundle)
    started = time.perf_counter()
    refused = {}  # (target, precision) -> why the parity gate refused it: shown, not fatal
    with Phases(console, keep=_once()) as phases:
        for precision in PRECISIONS:
            for t in targets:
                if precision not in t.precisions:
                    continue
                try:
                    export_bundle(source, bundle, targets=[t.name], precision=precision, report=phases)
                except ParityError as exc:
                    refused[(t.name, precision)] = str(exc)
                    console.print(f"{t.name} {precision}: refused by the parity gate ({exc})")
    console.print(
        f"exported to {', '.join(t.name for t in targets)} at {', '.join(PRECISIONS)} "
        f"in {time.perf_counter() - started:.0f} s" + ("" if args.verbose else f" (the converters' output: {log})")
    )

    runs = [("torch", "fp32", source)]
    readers = [registry.backend_for_target(t.name) for t in targets]
    runs += [
        (b.name, p, bundle)
        for t, b in zip(targets, readers)
        if b.installed() and b.predicts_here()
        for p in PRECISIONS
        if p in t.precisions and (t.name, p) not in refused
    ]
    converted_only = [t for t, b in zip(targets, readers) if not b.predicts_here()]
    table = Table(
        "backend",
        "precision",
        f"latency s ({args.steps} step, {len(PROMPTS)} prompts, median of 3)",
        "PSNR vs torch (dB)",
    )
    rows, reference = [], None
    for backend, precision, model in runs:
        sampler = nitro_edge.load(model, backend, **({} if backend == "torch" else {"precision": precision}))
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            images = sampler.generate(PROMPTS, steps=args.steps, seed=args.seed, output="numpy")
            times.append(time.perf_counter() - t0)
        reference = images if reference is None else reference
        psnr = psnr_db(reference, images)
        table.add_row(
            backend, precision, f"{np.median(times):.3f}", "reference" if backend == "torch" else f"{psnr:.1f}"
        )
        rows.append(images)
    for (target, precision), why in refused.items():
        table.add_row(target, precision, "not exported: the parity gate refused it", why.split(";")[0])
    for t in converted_only:
        table.add_row(
            t.name,
            "/".join(p for p in PRECISIONS if p in t.precisions),
            f"converted; predicts on {registry.backend_for_target(t.name).platforms} only",
            "spec checked",
        )
    console.print(table)
    # One set of weights serves 1-4 steps (bottom-up refinement): the torch rows at 2 and 4 steps.
    labels = [f"{b} {p}" for b, p, _ in runs]
    torch_sampler = nitro_edge.load(source, "torch")
    for steps in MORE_STEPS:
        rows.append(torch_sampler.generate(PROMPTS, steps=steps, seed=args.seed, output="numpy"))
        labels.append(f"torch fp32 at {steps} steps")
    grid = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
    from PIL import Image

    path = args.out / "grid.png"
    Image.fromarray((grid * 255).round().astype(np.uint8)).resize(
        (grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST
    ).save(path)
    console.print(f"grid: {path} (rows: {', '.join(labels)}; columns: the prompts)")


if __name__ == "__main__":
    main()
