"""Full-size SD1.5, SD2.1-base and SDXL architectures (published configurations, random weights, no
download) through nitro-edge, against diffusers' own pipeline in torch fp32 and optimum's ONNX
Runtime and OpenVINO pipelines, one step, on this machine. One command runs it all:

    python benchmarks/full_scale.py --out runs/full-scale [--models sd15 sd21 sdxl] [--sdxl-size 1024 512] [--runs 3]

Every measurement runs in a fresh process (so peak RSS is its own) and is kept in
OUT/<model>/rows/<row>.json; a second invocation reuses rows already measured (delete them to
measure again). At the end it writes OUT/results.md (tables, ratios to diffusers), OUT/results.json
and OUT/results.png. Rows per model:

- diffusers: the model's diffusers pipeline, torch fp32, guidance 0, 1 step (per-component times
  from wrappers around text encoder(s), UNet and VAE decode).
- optimum ort / optimum openvino (models in --optimum): optimum's export, then its pipeline;
  OpenVINO twice, with the f32 precision hint and with the plugin's default (bf16 on this CPU), with
  optimum's default dynamic shapes (its static reshape assumes guidance, a UNet batch of 2).
- nitro-edge fp32 bundles with the full VAE (sdxl: one bundle per target), and for sd15 and sd21
  also with a full-size AutoencoderTiny (TAESD layout); an int8 (weight-only) OpenVINO bundle (sdxl:
  also with the tiny decoder); a Core ML fp16 bundle (converted and checked; no run: prediction
  needs macOS); OpenVINO fp32 also at the plugin's default precision; for sd15 also fp16 (ONNX,
  OpenVINO) and int8 ONNX bundles, --onnx-optimize, and int8-hybrid OpenVINO bundles (full VAE and
  tiny decoder). Bundles are exported at the size they are measured at.
Also: the machine's fp32 GEMM peak (4096^3) and the SD1.5 UNet's FLOPs per call.

Needs `pip install -c constraints.txt -e '.[all,optimum]'`.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROMPT = "a photograph of an astronaut riding a horse"
SIZES = {"sd15": 512, "sd21": 512, "sdxl": 1024}
OV_F32 = {"INFERENCE_PRECISION_HINT": "f32"}


# ---------------------------------------------------------------- the models, from their configs

def build(model: str, out: Path) -> Path:
    """Save the full-size `model` pipeline with random weights to `out` (once)."""
    if (out / "model_index.json").is_file():
        return out
    import diffusers
    import torch
    import transformers

    from nitro_edge.tiny import write_clip_tokenizer

    torch.manual_seed(0)
    clip_l = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                  max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu", bos_token_id=49406,
                  eos_token_id=49407, projection_dim=768)
    vae = diffusers.AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2,
        sample_size=SIZES[model], scaling_factor=0.13025 if model == "sdxl" else 0.18215)
    sched = diffusers.EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    out.mkdir(parents=True, exist_ok=True)
    write_clip_tokenizer(out / "tokenizer", pad_token="!" if model == "sd21" else "<|endoftext|>")
    tok = transformers.CLIPTokenizer.from_pretrained(str(out / "tokenizer"))
    if model == "sd15":
        unet = diffusers.UNet2DConditionModel(
            sample_size=64, cross_attention_dim=768, attention_head_dim=8, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
        text = transformers.CLIPTextModel(transformers.CLIPTextConfig(**clip_l))
    elif model == "sd21":  # SD2.1-base / SD-Turbo: OpenCLIP ViT-H text tower, linear projections
        unet = diffusers.UNet2DConditionModel(
            sample_size=64, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280), use_linear_projection=True,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
        text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
            **{**clip_l, "hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
               "num_hidden_layers": 23, "hidden_act": "gelu", "projection_dim": 512, "pad_token_id": 0}))
    if model != "sdxl":
        diffusers.StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched,
                                          safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False).save_pretrained(str(out))
        return out
    unet = diffusers.UNet2DConditionModel(
        sample_size=128, cross_attention_dim=2048, attention_head_dim=(5, 10, 20), layers_per_block=2,
        block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(**clip_l))
    text_2 = transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(
        **{**clip_l, "hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 20,
           "num_hidden_layers": 32, "hidden_act": "gelu", "projection_dim": 1280}))
    write_clip_tokenizer(out / "tokenizer_2", pad_token="!")
    tok_2 = transformers.CLIPTokenizer.from_pretrained(str(out / "tokenizer_2"))
    diffusers.StableDiffusionXLPipeline(vae=vae, text_encoder=text, text_encoder_2=text_2, tokenizer=tok,
                                        tokenizer_2=tok_2, unet=unet, scheduler=sched).save_pretrained(str(out))
    return out


def build_taesd(out: Path) -> Path:
    if not (out / "config.json").is_file():
        import diffusers
        import torch

        torch.manual_seed(0)
        diffusers.AutoencoderTiny().save_pretrained(str(out))  # the TAESD layout at its published size
    return out


# ---------------------------------------------------------------- children (one process each)

def _stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def child_diffusers(source: str, model: str, runs: int, size: int) -> dict:
    import diffusers

    cls = diffusers.StableDiffusionXLPipeline if model == "sdxl" else diffusers.StableDiffusionPipeline
    t0 = time.perf_counter()
    pipe = cls.from_pretrained(source)
    timings: dict[str, list[float]] = {}

    def timed(name, fn):
        def call(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            timings.setdefault(name, []).append(time.perf_counter() - start)
            return out
        return call

    # Instance attributes on this one pipeline's modules, to time each part; nothing is patched globally.
    for name in ("text_encoder", "text_encoder_2", "unet"):
        module = getattr(pipe, name, None)
        if module is not None:
            module.forward = timed("generator" if name == "unet" else name, module.forward)
    pipe.vae.decode = timed("vae_decoder", pipe.vae.decode)
    return _run_pipeline(pipe, runs, size, t0, timings)


def _run_pipeline(pipe, runs: int, size: int, t0: float, timings: dict | None = None) -> dict:
    """One cold call, then `runs` warm ones; cold start counts from `t0` (before loading)."""
    import torch

    pipe.set_progress_bar_config(disable=True)
    times = []
    for i in range(runs + 1):
        if i == 1:
            for v in (timings or {}).values():
                v.clear()  # keep the warm runs' component times only
        start = time.perf_counter()
        pipe(PROMPT, num_inference_steps=1, guidance_scale=0.0, height=size, width=size,
             generator=torch.Generator().manual_seed(i))
        times.append(time.perf_counter() - start)
        if i == 0:
            cold = time.perf_counter() - t0
    return {"cold_start_s": cold, "end_to_end_s": _stats(times[1:]),
            "components_s": {k: _stats(v) for k, v in (timings or {}).items()}}


def _optimum_class(kind: str, model: str):
    xl = "XL" if model == "sdxl" else ""
    if kind == "ort":
        import optimum.onnxruntime as module
        return getattr(module, f"ORTStableDiffusion{xl}Pipeline")
    import optimum.intel as module
    return getattr(module, f"OVStableDiffusion{xl}Pipeline")


def child_optimum_export(kind: str, model: str, source: str, out: str) -> dict:
    cls = _optimum_class(kind, model)
    t0 = time.perf_counter()
    extra = {"load_in_8bit": False, "compile": False} if kind == "openvino" else {}  # fp32, as exported by us
    pipe = cls.from_pretrained(source, export=True, **extra)
    pipe.save_pretrained(out)
    return {"export_s": time.perf_counter() - t0}


def child_optimum_run(kind: str, model: str, folder: str, runs: int, size: int, ov_config: dict | None) -> dict:
    cls = _optimum_class(kind, model)
    t0 = time.perf_counter()
    if kind == "openvino":
        # Dynamic shapes, optimum's default: its static reshape assumes guidance (UNet batch 2).
        pipe = cls.from_pretrained(folder, ov_config=ov_config or {})
    else:
        pipe = cls.from_pretrained(folder)
    return _run_pipeline(pipe, runs, size, t0)


def child_export(source: str, bundle: str, targets: list, precision: str, tiny: str | None, options: dict,
                 size: int) -> dict:
    from nitro_edge.export import export_bundle

    t0 = time.perf_counter()
    export_bundle(source, bundle, targets=targets, precision=precision, tiny_vae=tiny, options=options,
                  height=size, width=size, report=lambda m: print(m, file=sys.stderr, flush=True))
    manifest = json.loads((Path(bundle) / "manifest.json").read_text())
    parity = {k: v.get("end_to_end_psnr_db") for k, v in manifest["parity"].items()}
    return {"export_s": time.perf_counter() - t0, "parity_psnr_db": parity}


def child_bench(bundle: str, backend: str, precision: str, runs: int, options: dict) -> dict:
    from nitro_edge.bench import measure

    r = measure(bundle, backend, precision, runs, 1, options)
    return {"cold_start_s": r["cold_start_s"], "end_to_end_s": r["end_to_end_s"],
            "components_s": r["components_s"], "size_gib": r["size_mib"] / 1024}


def child_bf16_parity(bundle: str, precision: str) -> dict:
    """PSNR between OpenVINO's f32 and device-default (bf16 here) images: one prompt, one seed."""
    sys.path.insert(0, str(Path(__file__).parent))
    from bf16_parity import compare

    return compare(bundle, precision, prompts=(PROMPT,), seeds=1)


class ChildFailed(RuntimeError):
    pass


CHILDREN = {f.__name__: f for f in (child_diffusers, child_optimum_export, child_optimum_run, child_export,
                                     child_bench, child_bf16_parity)}


def in_child(name: str, *args) -> dict:
    """Run CHILDREN[name](*args) in a fresh process; its result plus wall time and peak RSS."""
    t0 = time.perf_counter()
    child = subprocess.run([sys.executable, __file__, "--child", name, json.dumps(args)], capture_output=True,
                           text=True)
    if child.returncode != 0:
        lines = [line for line in child.stderr.strip().splitlines() if line.strip()] or ["no output"]
        reason = "killed by signal 9 (out of memory?)" if child.returncode == -9 else lines[-1][:300]
        print(child.stderr[-4000:], file=sys.stderr, flush=True)
        raise ChildFailed(f"{name} failed: {reason}")
    result = json.loads(child.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - t0
    return result


def _child_main(name: str, args_json: str) -> None:
    result = CHILDREN[name](*json.loads(args_json))
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps(result), flush=True)


# ---------------------------------------------------------------- the plan per model

def _attempt(fn) -> dict:
    try:
        return fn()
    except ChildFailed as exc:
        return {"failed": str(exc)}


def plan(model: str, optimum: bool) -> list[dict]:
    """Rows to measure: exports first (each bundle once), then runs."""
    rows = [{"id": "diffusers", "label": "diffusers torch fp32", "decoder": "full VAE", "run": ("diffusers",)}]
    if optimum:
        rows += [
            {"id": "optimum-ort", "label": "optimum onnxruntime fp32", "decoder": "full VAE",
             "export": ("optimum", "ort"), "run": ("optimum", "ort", None)},
            {"id": "optimum-ov-f32", "label": "optimum openvino fp32 (f32 hint)", "decoder": "full VAE",
             "export": ("optimum", "openvino"), "run": ("optimum", "openvino", OV_F32)},
            {"id": "optimum-ov-default", "label": "optimum openvino fp32 (plugin default: bf16 here)",
             "decoder": "full VAE", "export": ("optimum", "openvino"), "run": ("optimum", "openvino", {})},
        ]
    for decoder in ("full", "tiny") if model in ("sd15", "sd21") else ("full",):
        label = "full VAE" if decoder == "full" else "tiny decoder"
        for target in ("onnx", "openvino"):
            # sdxl: one target per bundle, deleted after use (disk); the others hold both.
            bundle = ("fp32", decoder, (target,) if model == "sdxl" else ("onnx", "openvino"), {})
            rows.append({"id": f"nitro-{target}-fp32-{decoder}", "decoder": label, "export": ("nitro", *bundle),
                         "label": f"nitro-edge {target} fp32" + (" (f32 hint)" if target == "openvino" else ""),
                         "run": ("nitro", target, "fp32", {})})
            if decoder == "full" and target == "openvino":
                rows.append({"id": "nitro-openvino-fp32-full-default", "decoder": label, "export": ("nitro", *bundle),
                             "label": "nitro-edge openvino fp32 (plugin default: bf16 here)",
                             "run": ("nitro", "openvino", "fp32", {"inference_precision": None})})
    # int8 bundles run at OpenVINO's device-default precision (bf16 here), as the runtime does for int8.
    int8 = [("int8", "full")] + ([("int8-hybrid", "full"), ("int8-hybrid", "tiny")] if model == "sd15" else
                                 [("int8", "tiny")] if model == "sdxl" else [])
    for precision, decoder in int8:
        rows.append({"id": f"nitro-openvino-{precision}-{decoder}", "label": f"nitro-edge openvino {precision}",
                     "decoder": "full VAE" if decoder == "full" else "tiny decoder",
                     "export": ("nitro", precision, decoder, ("openvino",), {}),
                     "run": ("nitro", "openvino", precision, {})})
    if model == "sd15":  # the other precisions of the ONNX and OpenVINO targets (fp16 computes in f32 on CPUs)
        rows += [{"id": f"nitro-{target}-{precision}-full", "label": f"nitro-edge {target} {precision}",
                  "decoder": "full VAE", "export": ("nitro", precision, "full", targets, {}),
                  "run": ("nitro", target, precision, {})}
                 for precision, targets in (("fp16", ("onnx", "openvino")), ("int8", ("onnx",)))
                 for target in targets]
    # Core ML: converted and checked here; prediction needs macOS, so these rows have no run.
    rows.append({"id": "nitro-coreml-fp16-full", "label": "nitro-edge coreml fp16", "decoder": "full VAE",
                 "export": ("nitro", "fp16", "full", ("coreml",), {}), "run": None})
    if model == "sd15":
        rows += [
            {"id": "nitro-onnx-fp32-full-optimized", "label": "nitro-edge onnx fp32 --onnx-optimize",
             "decoder": "full VAE", "export": ("nitro", "fp32", "full", ("onnx",), {"onnx": {"optimize": True}}),
             "run": ("nitro", "onnx", "fp32", {})},
        ]
    return rows


def _bundle_name(precision, decoder, targets, options, size) -> str:
    extra = "-optimized" if options.get("onnx", {}).get("optimize") else ""
    return f"bundle-{'+'.join(targets)}-{precision}-{decoder}{extra}-{size}"


def measure_model(model: str, size: int, out: Path, runs: int, optimum: bool, keep: bool, report) -> list[dict]:
    """Every row of plan() for `model` at `size`² (rows of a size other than the native one in rows-<size>)."""
    folder = out / model
    rows_dir = folder / ("rows" if size == SIZES[model] else f"rows-{size}")
    rows_dir.mkdir(parents=True, exist_ok=True)
    source = build(model, folder / "source")
    taesd = build_taesd(out / "taesd")
    exports: dict[str, dict] = {}
    results = []
    rows = plan(model, optimum)
    for i, row in enumerate(rows):
        cached = rows_dir / f"{row['id']}.json"
        if cached.is_file():
            results.append(json.loads(cached.read_text()))
            report(f"{model} {row['id']}: reused {cached}")
            continue
        export, exp, made = row.get("export"), {}, None
        try:
            if export and export[0] == "optimum":
                exp_dir = made = folder / f"optimum-{export[1]}"
                key = json.dumps(export)
                if key not in exports:
                    exports[key] = _attempt(lambda: in_child("child_optimum_export", export[1], model, str(source),
                                                             str(exp_dir)) if not (exp_dir / "model_index.json").is_file() else {})
                exp = exports[key]
                if "failed" in exp:
                    raise ChildFailed(exp["failed"])
                run = in_child("child_optimum_run", row["run"][1], model, str(exp_dir), runs, size, row["run"][2])
                run["size_gib"] = sum(f.stat().st_size for f in exp_dir.rglob("*") if f.is_file()) / 2**30
            elif export:
                _, precision, decoder, targets, options = export
                bundle = made = folder / _bundle_name(precision, decoder, targets, options, size)
                key = json.dumps(export)
                if key not in exports:
                    exports[key] = _attempt(lambda: in_child(
                        "child_export", str(source), str(bundle), list(targets), precision,
                        str(taesd) if decoder == "tiny" else None, options, size) if not (bundle / "manifest.json").is_file() else {})
                exp = exports[key]
                if "failed" in exp:
                    raise ChildFailed(exp["failed"])
                if row["run"] is None:
                    run = {"not_run": "prediction needs macOS", "size_gib": sum(
                        f.stat().st_size for f in bundle.rglob("*") if f.is_file()) / 2**30}
                else:
                    run = in_child("child_bench", str(bundle), row["run"][1], row["run"][2], runs, row["run"][3])
                if row["run"] and row["run"][1] == "openvino" and row["run"][3].get("inference_precision", "") is None:
                    # How far the device's default precision moves this bundle's image from f32 compute.
                    bf16 = _attempt(lambda: in_child("child_bf16_parity", str(bundle), precision))
                    run["bf16_vs_f32_psnr_db"] = bf16.get("min_psnr_db", bf16.get("failed"))
            else:
                run = in_child("child_diffusers", str(source), model, runs, size)
        except ChildFailed as exc:  # recorded, and the run goes on
            run = {"failed": str(exc)}
            exp = exports.get(json.dumps(export), {}) if export else {}
            exp = {} if "failed" in exp else exp
        result = {**{k: v for k, v in row.items() if k in ("id", "label", "decoder")}, "model": model,
                  "size": size, "runs": runs, **run,
                  "export_s": exp.get("export_s"), "export_peak_rss_gib": exp.get("peak_rss_gib"),
                  "parity_psnr_db": exp.get("parity_psnr_db")}
        cached.write_text(json.dumps(result, indent=2))
        if made is not None and made.exists() and not keep and all(r.get("export") != export for r in rows[i + 1:]):
            shutil.rmtree(made)  # measured; full-size bundles would not all fit on the disk
        report(f"{model} {row['id']}: " + (result.get("failed") or result.get("not_run") or
               f"{result['end_to_end_s']['median']:.2f} s, peak RSS {result['peak_rss_gib']:.2f} GiB"))
        results.append(result)
    return results


# ---------------------------------------------------------------- machine figures and tables

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


def unet_flops(source: Path) -> float:
    """FLOPs of one UNet call at the model's native size, batch 1, by torch's FLOP counter."""
    import diffusers
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    unet = diffusers.UNet2DConditionModel.from_pretrained(str(source / "unet")).eval()
    latent = unet.config.sample_size
    added = None
    if unet.config.addition_embed_type == "text_time":
        added = {"text_embeds": torch.randn(1, 1280), "time_ids": torch.randn(1, 6)}
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet(torch.randn(1, 4, latent, latent), torch.tensor([999]),
             torch.randn(1, 77, unet.config.cross_attention_dim), added_cond_kwargs=added)
    return float(counter.get_total_flops())


def table(rows: list[dict]) -> list[str]:
    base = next(r for r in rows if r["id"] == "diffusers")
    lines = [f"### {base['model']} ({base['size']}², 1 step, median of {base['runs']} warm runs)", "",
             "| pipeline | decoder | end-to-end s | × diffusers speed | text s | generator s | decoder s | "
             "cold start s | peak RSS GiB | RSS / diffusers | size GiB | export s | export peak RSS GiB | parity dB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def f(value, fmt="{:.2f}"):
        return "" if value is None else fmt.format(value)

    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['label']} | {r['decoder']} | {r['failed']} |" + " |" * 11)
            continue
        if "not_run" in r:  # exported only
            lines.append(f"| {r['label']} | {r['decoder']} | not run: {r['not_run']} |" + " |" * 7 +
                         f" {f(r.get('size_gib'))} | {f(r.get('export_s'), '{:.0f}')} | "
                         f"{f(r.get('export_peak_rss_gib'), '{:.1f}')} | spec checked |")
            continue
        comps = r.get("components_s") or {}
        text = sum(comps[k]["median"] for k in comps if k.startswith("text_encoder")) if comps else None
        parity = " ".join(f"{v:.0f}" for v in (r.get("parity_psnr_db") or {}).values() if v is not None)
        bf16 = r.get("bf16_vs_f32_psnr_db")
        if bf16 is not None:  # a number, or why it could not be measured
            parity += f"; bf16 vs f32: {bf16:.1f}" if isinstance(bf16, float) else f"; bf16 vs f32: {bf16}"
        lines.append(
            f"| {r['label']} | {r['decoder']} | {r['end_to_end_s']['median']:.2f} | "
            f"{base['end_to_end_s']['median'] / r['end_to_end_s']['median']:.2f} | {f(text)} | "
            f"{f(comps.get('generator', {}).get('median'))} | {f(comps.get('vae_decoder', {}).get('median'))} | "
            f"{r['cold_start_s']:.1f} | {r['peak_rss_gib']:.2f} | {r['peak_rss_gib'] / base['peak_rss_gib']:.2f} | "
            f"{f(r.get('size_gib'))} | {f(r.get('export_s'), '{:.0f}')} | {f(r.get('export_peak_rss_gib'), '{:.1f}')} | "
            f"{parity} |")
    return lines


def chart(all_rows: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(all_rows), figsize=(6.5 * len(all_rows), 5.5), squeeze=False)
    for ax, (model, rows) in zip(axes[0], all_rows.items()):
        rows = [r for r in rows if "failed" not in r and "not_run" not in r]
        labels = [f"{r['label'].replace('nitro-edge ', 'ne ')}\n{r['decoder']}" for r in rows]
        med = [r["end_to_end_s"]["median"] for r in rows]
        colors = ["#999999" if r["id"] == "diffusers" else "#dd8452" if r["id"].startswith("optimum") else "#4c72b0"
                  for r in rows]
        ax.barh(labels[::-1], med[::-1], color=colors[::-1])
        ax.set_xlabel("end-to-end latency, s (median)")
        ax.set_title(f"{rows[0]['model']}, {rows[0]['size']}², 1 step")
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle("grey: diffusers torch fp32, orange: optimum, blue: nitro-edge")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/full-scale"))
    parser.add_argument("--models", nargs="+", default=["sd15", "sd21", "sdxl"], choices=list(SIZES))
    parser.add_argument("--optimum", nargs="*", default=["sd15"], choices=list(SIZES),
                        help="models to compare with optimum's pipelines (default sd15)")
    parser.add_argument("--sdxl-size", type=int, nargs="+", default=[1024], choices=[512, 1024],
                        help="SDXL resolution(s); 1024 is native, 512 is kept in OUT/sdxl/rows-512")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep-bundles", action="store_true", help="keep every bundle (needs about 100 GB)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    def report(message):
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    all_rows = {}
    for model in args.models:
        for size in args.sdxl_size if model == "sdxl" else [SIZES[model]]:
            key = model if size == SIZES[model] else f"{model}@{size}"
            all_rows[key] = measure_model(model, size, args.out, args.runs, model in args.optimum, args.keep_bundles,
                                          report)
    peak = gemm_peak()
    lines = [f"Machine: {_cpu()}, {_cores()} cores; {time.strftime('%Y-%m-%d')}; `python benchmarks/full_scale.py "
             f"--models {' '.join(args.models)} --sdxl-size {' '.join(map(str, args.sdxl_size))} --runs {args.runs}`", ""]
    for model, rows in all_rows.items():
        lines += table(rows) + [""]
    flops = unet_flops(args.out / "sd15" / "source") if "sd15" in all_rows else None
    if flops:
        best = min((r for r in all_rows["sd15"] if r["id"].startswith("nitro") and r.get("components_s", {}).get("generator")
                    and "fp32" in r["id"] and "default" not in r["id"]), key=lambda r: r["components_s"]["generator"]["median"])
        achieved = flops / best["components_s"]["generator"]["median"]
        lines.append(f"fp32 GEMM peak (4096³, torch): {peak / 1e9:.0f} GFLOP/s. SD1.5 UNet, one call at 64×64 latents: "
                     f"{flops / 1e9:.0f} GFLOP (torch's FLOP counter); fastest fp32 generator ({best['label']}): "
                     f"{achieved / 1e9:.0f} GFLOP/s = {achieved / peak:.0%} of the GEMM peak.")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    (args.out / "results.json").write_text(json.dumps({"rows": all_rows, "gemm_peak_flops": peak, "unet_flops": flops},
                                                      indent=2))
    chart(all_rows, args.out / "results.png")
    print("\n".join(lines))


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        _child_main(sys.argv[2], sys.argv[3])
    else:
        main()
