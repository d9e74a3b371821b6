"""Full-size SD1.5 architecture (random weights, 512x512, one step) through nitro-edge, against
diffusers' own pipeline in torch fp32, on this machine. Prints JSON lines and a markdown table.

    python benchmarks/full_scale.py --out runs/full-scale [--targets onnx openvino] [--precision fp32] [--runs 3]

What it does: build the SD1.5 pipeline from its published configuration with random weights and
save it (no download); time diffusers' StableDiffusionPipeline (1 step, guidance 0) over --runs
warm runs; export with nitro-edge (parity gate included) with the full VAE and with a full-size
AutoencoderTiny decoder (random weights, TAESD layout); time every backend; record export time,
export peak RSS (each export in its own process), peak RSS of generation, size on disk; and the
machine's fp32 matmul peak (a 4096^3 GEMM) against the UNet's achieved FLOP/s.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROMPT = "a photograph of an astronaut riding a horse"


def build(out: Path) -> Path:
    import diffusers
    import torch
    import transformers

    from nitro_edge.tiny import write_clip_tokenizer

    if (out / "model_index.json").is_file():
        return out
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=64, cross_attention_dim=768, attention_head_dim=8, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    vae = diffusers.AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2, sample_size=512)
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
        max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407))
    write_clip_tokenizer(out / "tokenizer")
    tok = transformers.CLIPTokenizer.from_pretrained(str(out / "tokenizer"))
    sched = diffusers.EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    diffusers.StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched,
                                      safety_checker=None, feature_extractor=None,
                                      requires_safety_checker=False).save_pretrained(str(out))
    taesd = diffusers.AutoencoderTiny()  # the TAESD layout at its published size
    taesd.save_pretrained(str(out.parent / "taesd"))
    return out


def time_diffusers(source: Path, runs: int) -> dict:
    import diffusers
    import torch

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(str(source))
    pipe.set_progress_bar_config(disable=True)
    times = []
    for i in range(runs + 1):
        t0 = time.perf_counter()
        pipe(PROMPT, num_inference_steps=1, guidance_scale=0.0, generator=torch.Generator().manual_seed(i))
        times.append(time.perf_counter() - t0)
    return {"name": "diffusers torch fp32", "median_s": statistics.median(times[1:]), "min_s": min(times[1:]),
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def export_in_child(source: Path, bundle: Path, target: str, precision: str, tiny: Path | None) -> dict:
    code = ("import sys, time, resource; from nitro_edge.export import export_bundle; t=time.perf_counter(); "
            "export_bundle(sys.argv[1], sys.argv[2], targets=[sys.argv[3]], precision=sys.argv[4], "
            "tiny_vae=sys.argv[5] or None, report=lambda m: print(m, flush=True)); "
            "print('RESULT', time.perf_counter()-t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    child = subprocess.run([sys.executable, "-c", code, str(source), str(bundle), target, precision, str(tiny or "")],
                           capture_output=True, text=True)
    if child.returncode != 0:
        raise SystemExit(child.stderr[-3000:])
    _, seconds, rss_kib = child.stdout.strip().splitlines()[-1].split()
    return {"export_s": float(seconds), "export_peak_rss_gib": int(rss_kib) / 2**20,
            "log": [line for line in child.stdout.splitlines() if "parity" in line]}


def time_bundle_in_child(bundle: Path, backend: str, precision: str, runs: int) -> dict:
    child = subprocess.run([sys.executable, "-m", "nitro_edge.bench", str(bundle), backend, precision, str(runs), "1"],
                           capture_output=True, text=True)
    if child.returncode != 0:
        raise SystemExit(child.stderr[-3000:])
    return json.loads(child.stdout.strip().splitlines()[-1])


def gemm_peak() -> float:
    import torch

    a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
    a @ b
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * 4096**3 / min(times)


def unet_flops() -> float:
    """FLOPs of one SD1.5 UNet call at 64x64 latents, batch 1, counted by torch's FLOP counter."""
    import diffusers
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    unet = diffusers.UNet2DConditionModel(
        sample_size=64, cross_attention_dim=768, attention_head_dim=8, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet(torch.randn(1, 4, 64, 64), torch.tensor([999]), torch.randn(1, 77, 768))
    return float(counter.get_total_flops())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/full-scale"))
    parser.add_argument("--targets", nargs="+", default=["onnx", "openvino"])
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    source = build(args.out / "sd15")
    results = {"diffusers": time_diffusers(source, args.runs)}
    print(json.dumps(results["diffusers"]), flush=True)
    rows = []
    for decoder, tiny in (("full VAE", None), ("tiny decoder", args.out / "taesd")):
        for target in args.targets:
            bundle = args.out / f"bundle-{target}-{args.precision}-{'tiny' if tiny else 'full'}"
            exp = export_in_child(source, bundle, target, args.precision, tiny)
            run = time_bundle_in_child(bundle, target, args.precision, args.runs)
            row = {"backend": target, "precision": args.precision, "decoder": decoder, **exp,
                   "median_s": run["end_to_end_s"]["median"], "components_s": run["components_s"],
                   "cold_start_s": run["cold_start_s"], "peak_rss_gib": run["peak_rss_mib"] / 1024,
                   "size_gib": run["size_mib"] / 1024}
            print(json.dumps(row), flush=True)
            rows.append(row)
    peak = gemm_peak()
    flops = unet_flops()
    best = min((r for r in rows if r["decoder"] == "full VAE"), key=lambda r: r["components_s"]["generator"]["median"])
    achieved = flops / best["components_s"]["generator"]["median"]
    base = results["diffusers"]
    lines = ["| pipeline | decoder | end-to-end s (median) | × faster than diffusers | generator s | decoder s | "
             "peak RSS GiB | RSS vs diffusers | size GiB | export s | export peak RSS GiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|",
             f"| diffusers torch fp32 | full VAE | {base['median_s']:.2f} | 1.00 | | | {base['peak_rss_gib']:.2f} | 1.00 | | | |"]
    for r in rows:
        lines.append(f"| nitro-edge {r['backend']} {r['precision']} | {r['decoder']} | {r['median_s']:.2f} | "
                     f"{base['median_s'] / r['median_s']:.2f} | {r['components_s']['generator']['median']:.2f} | "
                     f"{r['components_s']['vae_decoder']['median']:.2f} | {r['peak_rss_gib']:.2f} | "
                     f"{r['peak_rss_gib'] / base['peak_rss_gib']:.2f} | {r['size_gib']:.2f} | {r['export_s']:.0f} | "
                     f"{r['export_peak_rss_gib']:.1f} |")
    lines.append("")
    lines.append(f"fp32 GEMM peak (4096³, torch): {peak / 1e9:.0f} GFLOP/s; SD1.5 UNet, one call: {flops / 1e9:.0f} GFLOP; "
                 f"fastest generator ({best['backend']}): {achieved / 1e9:.0f} GFLOP/s = {achieved / peak:.0%} of that peak")
    print("\n".join(lines))
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    (args.out / "results.json").write_text(json.dumps({"diffusers": base, "rows": rows, "gemm_peak_flops": peak,
                                                        "unet_flops": flops}, indent=2))


if __name__ == "__main__":
    main()
