"""NitroFusion training at SDXL scale on one CUDA GPU: seconds per iteration and peak GPU memory.

    python benchmarks/gpu_train.py --out runs/gpu-train            # the full SDXL architecture, 1024²
    python benchmarks/gpu_train.py --out runs/gpu-train-tiny --tiny --device cpu --steps 2   # what the tests run

The teacher is the full SDXL architecture with random weights (published configuration, no download)
written once as a diffusers folder; the student starts from it; the pool is the paper's 480 heads;
bf16 autocast, gradient checkpointing, a 4-step teacher sampled online. Rows: batch 1, the paper's
batch 5 with 20 accumulation steps, and the largest batch (one accumulation step) that fits, found
by doubling then bisecting, each in a fresh process so one out-of-memory run cannot taint the next.
Prints one JSON line per row and a table; writes OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

PROMPTS = [
    "a photograph of an astronaut riding a horse",
    "a watercolour of a fox in the snow",
    "a city street at night, neon lights",
    "a bowl of fruit on a wooden table",
]


def teacher(out: Path, tiny: bool) -> Path:
    if tiny:
        from nitro_edge.tiny import build_tiny_pipeline

        return out if (out / "model_index.json").is_file() else build_tiny_pipeline("sdxl", out)
    from scale.models import build

    return build("sdxl", out)


def child(folder: str, out: str, device: str, batch: int, accumulation: int, steps: int, resolution: int) -> dict:
    """One measured run in this process: `steps` iterations after one warm-up; peak memory, s/iteration."""
    import torch

    from nitro_edge.training.config import load_config
    from nitro_edge.training.train import train

    prompts = Path(out) / "prompts.txt"
    prompts.parent.mkdir(parents=True, exist_ok=True)
    prompts.write_text("\n".join(PROMPTS) + "\n")
    cuda = device == "cuda"
    cfg = load_config(
        None,
        {
            "teacher": folder,
            "prompts": str(prompts),
            "output": str(Path(out) / f"run-b{batch}-a{accumulation}"),
            "batch_size": batch,
            "gradient_accumulation": accumulation,
            "max_steps": steps + 2,
            "teacher_steps": 4,
            "pool_size": 480,
            "mixed_precision": "bf16" if cuda else "no",
            "gradient_checkpointing": True,
            "resolution": resolution,
            "checkpoint_every": 10**6,
            "sample_every": 10**6,
            "log_every": 10**6,
            "shift": 1000,
        },
    )
    times: list[float] = []

    class Done(Exception):
        pass

    def on_step(step: int, stats: dict) -> None:
        times.append(time.perf_counter())
        if len(times) == steps + 1:  # the first step warms up; stop before the end-of-run checkpoint
            raise Done

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    try:
        train(cfg, progress=False, on_step=on_step)
    except Done:
        pass
    per_iter = (times[-1] - times[0]) / steps
    return {
        "batch": batch,
        "accumulation": accumulation,
        "images_per_iteration": batch * accumulation,
        "s_per_iteration": round(per_iter, 3),
        "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
    }


def in_child(args, batch: int, accumulation: int) -> dict | None:
    """A measurement in a fresh process; None when it runs out of memory."""
    r = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            json.dumps([args.folder, str(args.out), args.device, batch, accumulation, args.steps, args.resolution]),
        ],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        if "out of memory" in r.stderr.lower() or "OutOfMemoryError" in r.stderr:
            return None
        raise RuntimeError(f"batch {batch}: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def largest_batch(args, start: int, limit: int) -> dict | None:
    """Double from `start` until a run does not fit (or `limit`), then bisect."""
    best, low, high = None, start, None
    batch = start
    while batch <= limit:
        row = in_child(args, batch, 1)
        if row is None:
            high = batch
            break
        best, low = row, batch
        batch *= 2
    while high is not None and high - low > 1:
        mid = (low + high) // 2
        row = in_child(args, mid, 1)
        if row is None:
            high = mid
        else:
            best, low = row, mid
    return best


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/gpu-train"))
    parser.add_argument("--tiny", action="store_true", help="the tiny SDXL layout (for tests on CPU)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--steps", type=int, default=3, help="timed iterations per row (after one warm-up)")
    parser.add_argument("--max-batch", type=int, default=64, help="upper bound of the largest-batch search")
    parser.add_argument("--skip-search", action="store_true", help="only the batch 1 and batch 5 x 20 rows")
    parser.add_argument("--accumulation", type=int, default=20, help="accumulation of the paper's row (20)")
    args = parser.parse_args(argv)
    args.resolution = 64 if args.tiny else 1024
    args.folder = str(teacher(args.out / ("teacher-tiny" if args.tiny else "teacher-sdxl"), args.tiny))
    rows = {
        "batch 1": in_child(args, 1, 1),
        f"batch 5 x {args.accumulation} accumulation (the paper's: 20)": in_child(args, 5, args.accumulation),
    }
    if not args.skip_search:
        rows["largest batch that fits"] = largest_batch(args, 8, args.max_batch)
    for name, row in rows.items():
        print(json.dumps({"row": name, **(row or {"fits": False})}), flush=True)
    print("| row | images / iteration | s / iteration | peak GPU GiB |\n|---|---|---|---|")
    for name, row in rows.items():
        if row:
            print(
                f"| {name} (batch {row['batch']}) | {row['images_per_iteration']} | {row['s_per_iteration']} | "
                f"{row['peak_gpu_gib']} |"
            )
        else:
            print(f"| {name} | does not fit | | |")
    (args.out / "results.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(child(*json.loads(sys.argv[2]))), flush=True)
    else:
        main()
