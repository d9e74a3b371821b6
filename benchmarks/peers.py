"""nitro-edge against the pipelines a user would pick instead, on one machine, in one run, on the same
weights: the full-size SD1.5 and SDXL architectures (published configurations, random weights, no
download), SD1.5 at 512², SDXL at 512² (or --sdxl-size 1024), one step. One command:

    python benchmarks/peers.py --out runs/peers [--runs 3] [--models sd15 sdxl]

Needs `pip install -c constraints.txt -e '.[all,peers]'` (stable-diffusion-cpp-python builds from its
sdist: a C++ compiler and CMake). Rows, each measured in a fresh process (so its peak RSS is its own):

- diffusers torch fp32 (guidance 0, one step): the baseline of the ratios.
- optimum-intel's OpenVINO pipeline on its fp32 export, at the f32 precision hint and at the
  plugin's default (bf16 on CPUs with it; where the default is f32 the device-default rows are left
  out, as they would repeat the f32 ones), and on its int8-weight export.
- FastSD CPU's configuration: the same optimum pipeline with an OpenVINO IR of the tiny decoder
  (TAESD layout) as its VAE decoder.
- openvino.genai's C++ Text2ImagePipeline on the same optimum exports: fp32 IR at f32 and at the
  device default, int8 weights; reshaped to one 512² image without guidance.
- stable-diffusion.cpp (stable-diffusion-cpp-python) on the pipeline written as one original-layout
  .safetensors file (nitro_edge.models.single_file_writer), converted on load to f32, f16 and q8_0
  (ggml's q8_0 matmuls quantise activations to int8 on the fly: its int8 mode), and q8_0 with TAESD.
- nitro-edge OpenVINO bundles exported from the same folder: int8-act (the decoder's activations in
  int8 too), int8-act with memory="low" (without and with OpenVINO's compiled-model cache), fp32
  with the full VAE and with the tiny decoder (each at f32 compute and at the device default),
  int8-hybrid and int8-act with the full VAE and with the tiny decoder.

Per row: median of --runs warm runs after one cold call, cold start (load, compile, first call), peak
RSS, size on disk, and the seed-0 image's PSNR against the same pipeline's own fp32 image (the
pipelines draw their noise differently, so a seed gives each a different image; optimum and genai
both draw torch's, so they are also compared with diffusers). nitro-edge rows quote their export
gate's end-to-end PSNR instead (against the same pipeline in torch fp32, two prompts). Also: which
kernels OpenVINO ran for nitro-edge's bundles, this machine's matmul peak at f32 / bf16 / int8 in OpenVINO, and each
OpenVINO generator's achieved FLOP rate against the peak of the precision it ran at.

SDXL gets the subset SDXL_ROWS (nitro-edge's fp32, int8-hybrid and int8-act bundles, one
stable-diffusion.cpp weight type besides f32). Rows are kept in OUT/<model>/peers/<row>.json (OUT/sdxl-512/ for SDXL at 512²), images
in .../peers/images/; a second invocation reuses what an earlier one measured (a failed row is
measured again, unless --keep-failed); `--rows ID ...` measures and reports a subset (with diffusers,
the base of the ratios). Writes OUT/peers.md, OUT/peers.json, OUT/peers.png (SD1.5) and OUT/peers-sdxl.png.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from scale.children import ChildFailed, in_child
from scale.models import SIZES as NATIVE
from scale.models import build, build_taesd
from scale.report import FLAGS, cell, cores, cpu_flags, cpu_model, markdown, unet_flops

PEERS = str(Path(__file__).parent / "scale" / "peer_children.py")
# SDXL at 512² by default, for time: stable-diffusion.cpp takes 59 s per SDXL image at 512² on two Sapphire
# Rapids cores, a row is four images, and 1024² is at least four times the work (--sdxl-size 1024 measures
# it there). The targets are set on SD1.5.
SIZES = {"sd15": 512, "sdxl": 512}
TITLES = {"sd15": "SD1.5", "sdxl": "SDXL"}
# The SDXL rows: each family's f32 and device-default rows, its int8 rows, the tiny-decoder rows.
SDXL_ROWS = {
    "diffusers", "optimum-f32", "optimum-default", "optimum-int8", "fastsd-f32", "fastsd-default", "genai-f32",
    "genai-default", "genai-int8", "sdcpp-f32", "sdcpp-q8_0", "sdcpp-q8_0-taesd", "nitro-fp32-f32",
    "nitro-fp32-default", "nitro-tiny-fp32-f32", "nitro-tiny-fp32-default", "nitro-int8-hybrid",
    "nitro-tiny-int8-hybrid", "nitro-int8-act", "nitro-tiny-int8-act",
}  # fmt: skip
F32 = {"INFERENCE_PRECISION_HINT": "f32"}


@dataclass(frozen=True)
class Peer:
    id: str
    label: str
    family: str  # diffusers, optimum, fastsd, genai, sdcpp, nitro-edge
    decoder: str  # "full VAE" or "tiny decoder"
    export: str  # the folder or file the row runs (a key of exports())
    args: dict = field(default_factory=dict)
    ref: str | None = None  # the row whose image this one's PSNR is measured against (its own fp32)


def plan(bf16: bool, model: str = "sd15") -> list[Peer]:
    """The rows in measuring order. The device-default rows only where the CPU computes bf16 by default
    (elsewhere the default is f32 and they would repeat the f32 rows); for SDXL the subset SDXL_ROWS.
    nitro-edge rows take their PSNR from the export's parity gate (against the same pipeline in torch
    fp32, two prompts), so they need no fp32 run of their own."""
    full, tiny = "full VAE", "tiny decoder"
    f32 = " (f32 hint)" if bf16 else " (f32: the device default here)"
    rows = [
        Peer("diffusers", "diffusers torch fp32", "diffusers", full, "source"),
        Peer("optimum-f32", "optimum openvino fp32" + f32, "optimum", full, "optimum", {"config": F32}),
        Peer("optimum-default", "optimum openvino fp32 (device default)", "optimum", full, "optimum", ref="optimum-f32"),
        Peer("optimum-int8", "optimum openvino int8 weights", "optimum", full, "optimum-int8", ref="optimum-f32"),
        Peer("fastsd-f32", "FastSD CPU config: optimum + tiny" + f32, "fastsd", tiny, "fastsd", {"config": F32}),
        Peer("fastsd-default", "FastSD CPU config: optimum + tiny (device default)", "fastsd", tiny, "fastsd",
             ref="fastsd-f32"),
        Peer("genai-f32", "openvino.genai fp32" + f32, "genai", full, "optimum", {"config": F32}),
        Peer("genai-default", "openvino.genai fp32 (device default)", "genai", full, "optimum", ref="genai-f32"),
        Peer("genai-int8", "openvino.genai int8 weights", "genai", full, "optimum-int8", ref="genai-f32"),
        Peer("sdcpp-f32", "stable-diffusion.cpp f32", "sdcpp", full, "single-file", {"wtype": "f32"}),
        Peer("sdcpp-f16", "stable-diffusion.cpp f16", "sdcpp", full, "single-file", {"wtype": "f16"}, "sdcpp-f32"),
        Peer("sdcpp-q8_0", "stable-diffusion.cpp q8_0", "sdcpp", full, "single-file", {"wtype": "q8_0"}, "sdcpp-f32"),
        Peer("sdcpp-q8_0-taesd", "stable-diffusion.cpp q8_0 + TAESD", "sdcpp", tiny, "single-file",
             {"wtype": "q8_0", "taesd": True}),
        Peer("nitro-int8-act", "nitro-edge openvino int8-act", "nitro-edge", full, "bundle-int8-act-full",
             {"precision": "int8-act"}),
        Peer("nitro-int8-act-low", "nitro-edge openvino int8-act, memory low", "nitro-edge", full,
             "bundle-int8-act-full", {"precision": "int8-act", "memory": "low"}),
        Peer("nitro-int8-act-low-cache", "nitro-edge openvino int8-act, memory low + compile cache", "nitro-edge",
             full, "bundle-int8-act-full", {"precision": "int8-act", "memory": "low", "cache": True}),
        Peer("nitro-fp32-f32", "nitro-edge openvino fp32" + f32, "nitro-edge", full, "bundle-fp32-full",
             {"precision": "fp32", "options": {"inference_precision": "f32"}}),
        Peer("nitro-fp32-default", "nitro-edge openvino fp32 (device default)", "nitro-edge", full, "bundle-fp32-full",
             {"precision": "fp32", "options": {"inference_precision": None}}),
        Peer("nitro-tiny-fp32-f32", "nitro-edge openvino fp32" + f32, "nitro-edge", tiny, "bundle-fp32-tiny",
             {"precision": "fp32", "options": {"inference_precision": "f32"}}),
        Peer("nitro-tiny-fp32-default", "nitro-edge openvino fp32 (device default)", "nitro-edge", tiny,
             "bundle-fp32-tiny", {"precision": "fp32", "options": {"inference_precision": None}}),
        Peer("nitro-int8-hybrid", "nitro-edge openvino int8-hybrid", "nitro-edge", full, "bundle-int8-hybrid-full",
             {"precision": "int8-hybrid"}),
        Peer("nitro-tiny-int8-hybrid", "nitro-edge openvino int8-hybrid", "nitro-edge", tiny,
             "bundle-int8-hybrid-tiny", {"precision": "int8-hybrid"}),
        Peer("nitro-tiny-int8-act", "nitro-edge openvino int8-act", "nitro-edge", tiny, "bundle-int8-act-tiny",
             {"precision": "int8-act"}),
    ]  # fmt: skip
    rows = [r for r in rows if bf16 or not r.id.endswith("-default")]
    return rows if model == "sd15" else [r for r in rows if r.id in SDXL_ROWS]


def native_bf16() -> bool:
    """Whether OpenVINO's CPU plugin computes in bf16 by default on this machine."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def make_export(key: str, out: Path, source: Path, taesd: Path, model: str, size: int) -> tuple[Path, dict]:
    """The folder (or file) behind export `key`, made once, and what making it cost (export s, peak RSS),
    kept in OUT/<model>/exports/<key>.json so that a row measured again on a reused export still reports
    it ({} for an export made before that file was kept)."""
    path, made = _make_export(key, out, source, taesd, model, size)
    record = out / "exports" / f"{key}.json"
    if made:
        record.parent.mkdir(exist_ok=True)
        record.write_text(json.dumps(made, indent=2))
    elif record.is_file():
        made = json.loads(record.read_text())
    return path, made


def _make_export(key: str, out: Path, source: Path, taesd: Path, model: str, size: int) -> tuple[Path, dict]:
    """The folder (or file) behind export `key`, made once; ({} when it already existed)."""
    path = out / key
    if key == "source":
        return source, {}
    if key in ("optimum", "optimum-int8"):
        made = {}
        if not (path / "model_index.json").is_file():
            made = in_child("child_optimum_export", "openvino", model, str(source), str(path), key != "optimum")
        for tokenizer in ("tokenizer", "tokenizer_2"):  # what openvino.genai reads (tokenizer_2: SDXL)
            if (path / tokenizer).is_dir() and not (path / tokenizer / "openvino_tokenizer.xml").is_file():
                in_child("child_ov_tokenizer", str(path / tokenizer), script=PEERS)
        return path, made
    if key == "fastsd":
        if not path.is_dir():
            optimum, _ = make_export("optimum", out, source, taesd, model, size)
            return path, in_child("child_fastsd_folder", str(optimum), str(taesd), str(path), size, script=PEERS)
        return path, {}
    if key == "single-file":
        path = out / f"{model}-single.safetensors"
        if not path.is_file():
            from nitro_edge.models.single_file_writer import write

            t0 = time.perf_counter()
            write(source, path)
            return path, {"export_s": time.perf_counter() - t0}
        return path, {}
    precision, decoder = key.removeprefix("bundle-").rsplit("-", 1)  # bundle-<precision>-<decoder>
    if not (path / "manifest.json").is_file():
        return path, in_child(
            "child_export",
            str(source),
            str(path),
            ["openvino"],
            precision,
            str(taesd) if decoder == "tiny" else None,
            {},
            size,
        )
    return path, {}


def run_row(peer: Peer, path: Path, taesd: Path, runs: int, image: Path, model: str, size: int) -> dict:
    a = peer.args
    if peer.family == "diffusers":
        return in_child("child_diffusers", str(path), model, runs, size, str(image))
    if peer.family in ("optimum", "fastsd"):
        return in_child("child_optimum_run", "openvino", model, str(path), runs, size, a.get("config"), str(image))
    if peer.family == "genai":
        return in_child("child_genai_run", str(path), runs, size, a.get("config", {}), str(image), script=PEERS)
    if peer.family == "sdcpp":
        tiny = str(taesd / "diffusion_pytorch_model.safetensors") if a.get("taesd") else None
        return in_child("child_sdcpp_run", str(path), a["wtype"], tiny, runs, size, str(image), script=PEERS)
    options = dict(a.get("options", {}))
    if a.get("cache"):  # OpenVINO's compiled-model cache, emptied first: the cold call fills it
        cache = path.parent / "ov-cache" / peer.id
        shutil.rmtree(cache, ignore_errors=True)
        options["cache_dir"] = str(cache)
    return in_child(
        "child_bench",
        str(path),
        "openvino",
        a["precision"],
        runs,
        options,
        str(image),
        a.get("memory", "normal"),
    )


def gate_psnr(bundle: Path, peer: Peer) -> float | None:
    """The export gate's end-to-end PSNR against torch fp32 at the precision the row computes in: a
    float bundle run at the device default is quoted from the gate's `device_default` variant (None
    where the gate did not hold that variant to its floor)."""
    parity = json.loads((bundle / "manifest.json").read_text())["parity"][f"openvino/{peer.args['precision']}"]
    if peer.args["precision"].startswith("int8") or peer.args.get("options", {}).get("inference_precision"):
        return parity["end_to_end_psnr_db"]
    variant = parity.get("variants", {}).get("device_default") or {}
    return variant.get("end_to_end_psnr_db") if variant.get("passed") else None


def psnr(a: Path, b: Path) -> float:
    import numpy as np
    from PIL import Image

    x = np.asarray(Image.open(a).convert("RGB"), dtype=np.float64)
    y = np.asarray(Image.open(b).convert("RGB"), dtype=np.float64)
    mse = float(np.mean((x - y) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def size_gib(path: Path) -> float:
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in files) / 2**30


def model_folder(out: Path, model: str, size: int) -> Path:
    """OUT/<model> at the model's native size, OUT/<model>-<size> at another."""
    return out / (model if size == NATIVE[model] else f"{model}-{size}")


def measure(
    out: Path,
    runs: int,
    report,
    only: list[str] | None = None,
    model: str = "sd15",
    size: int = 512,
    retry: bool = True,
):
    folder = model_folder(out, model, size)
    rows_dir = folder / "peers"
    (rows_dir / "images").mkdir(parents=True, exist_ok=True)
    source = build(model, folder / "source")
    taesd = build_taesd(out / "taesd")  # TAESD and TAESDXL share the layout; random weights either way
    # diffusers, the base of every ratio, is always reported (from its cached row when it is not asked for)
    peers = [p for p in plan(native_bf16(), model) if not only or p.id in only or p.id == "diffusers"]
    made: dict[str, tuple[Path, dict]] = {}
    results = []
    for peer in peers:
        cached = rows_dir / f"{peer.id}.json"
        kept = json.loads(cached.read_text()) if cached.is_file() else {"failed": "not measured"}
        if "failed" not in kept or (cached.is_file() and not retry):  # a failed row is measured again if retry
            kept.update(label=peer.label, family=peer.family, decoder=peer.decoder, ref=peer.ref)  # as planned now
            results.append(kept)
            report(f"{peer.id}: reused {cached}" + (f" ({kept['failed']})" if "failed" in kept else ""))
            continue
        image = rows_dir / "images" / f"{peer.id}.png"
        try:
            if peer.export not in made:
                made[peer.export] = make_export(peer.export, folder, source, taesd, model, size)
            path, exp = made[peer.export]
            result = run_row(peer, path, taesd, runs, image, model, size)
            result["size_gib"] = result.get("size_gib") or size_gib(path)
            result["export_s"] = exp.get("export_s")
            result["export_peak_rss_gib"] = exp.get("peak_rss_gib")
            if peer.family == "nitro-edge":
                result["psnr_vs_own_fp32_db"] = gate_psnr(path, peer)
        except ChildFailed as exc:  # recorded, and the run goes on
            result = {"failed": str(exc)}
            made.pop(peer.export, None)
        result.update(id=peer.id, label=peer.label, family=peer.family, decoder=peer.decoder, ref=peer.ref, runs=runs)
        cached.write_text(json.dumps(result, indent=2))
        report(
            f"{peer.id}: "
            + (result.get("failed") or f"{result['end_to_end_s']['median']:.2f} s, {result['peak_rss_gib']:.2f} GiB")
        )
        results.append(result)
    images = rows_dir / "images"
    for r in results:
        own = images / f"{r['id']}.png"
        if "failed" in r or not own.is_file():
            continue
        if r["ref"] and (images / f"{r['ref']}.png").is_file() and r["family"] != "nitro-edge":
            r["psnr_vs_own_fp32_db"] = psnr(own, images / f"{r['ref']}.png")
        if r["family"] in ("optimum", "genai") and r["decoder"] == "full VAE":  # torch's noise, as diffusers
            r["psnr_vs_diffusers_db"] = psnr(own, images / "diffusers.png")
    return results


def machine_figures(folder: Path, size: int, report) -> dict:
    """The GEMM peaks, the kernels per nitro-edge bundle in `folder`, and the UNet's FLOPs at `size`. Kept in
    OUT/<model>/peers/machine.json; a bundle's kernels are read again when its manifest changed (re-exported)."""
    import hashlib

    cache = folder / "peers" / "machine.json"
    figures = json.loads(cache.read_text()) if cache.is_file() else {}
    if "gemm" not in figures:
        figures["gemm"] = in_child("child_gemm_peak", script=PEERS)
    kernels = figures.setdefault("kernels", {})
    for key, precision, hint in (
        ("bundle-fp32-full", "fp32", "f32"),
        ("bundle-fp32-full", "fp32", None),
        ("bundle-int8-act-full", "int8-act", None),
        ("bundle-int8-hybrid-full", "int8-hybrid", None),
    ):
        manifest = folder / key / "manifest.json"
        label = f"{precision} ({hint or 'device default'})"
        if not manifest.is_file():
            kernels.pop(label, None)
            continue
        digest = hashlib.sha256(manifest.read_bytes()).hexdigest()
        if kernels.get(label, {}).get("manifest_sha256") != digest:
            kernels[label] = in_child("child_kernels", str(manifest.parent), precision, hint, script=PEERS)
            kernels[label]["manifest_sha256"] = digest
    if "unet_flops" not in figures:
        figures["unet_flops"] = unet_flops(folder / "source", size)
    cache.write_text(json.dumps(figures, indent=2))
    figures["gemm"] = {k: v for k, v in figures["gemm"].items() if isinstance(v, dict)}  # not wall_s, peak_rss
    report(f"GEMM peaks: { {k: round(v['flops_per_s'] / 1e9) for k, v in figures['gemm'].items()} } GFLOP/s")
    return figures


def report_md(results: list[dict], figures: dict, runs: int, model: str, size: int) -> list[str]:
    base = next(r for r in results if r["id"] == "diffusers")
    columns = [
        "pipeline",
        "decoder",
        "end-to-end s",
        "× diffusers",
        "generator s",
        "decoder s",
        "cold start s",
        "peak RSS GiB",
        "RSS / diffusers",
        "size GiB",
        "export s",
        "PSNR vs own fp32 dB",
        "PSNR vs diffusers dB",
    ]
    cells = []
    for r in results:
        if "failed" in r:
            cells.append([r["label"], r["decoder"], r["failed"]])
            continue
        e2e, comps = r["end_to_end_s"]["median"], r.get("components_s") or {}
        cells.append(
            [
                r["label"],
                r["decoder"],
                f"{e2e:.2f}",
                f"{base['end_to_end_s']['median'] / e2e:.2f}",
                cell(comps.get("generator", {}).get("median")),
                cell(comps.get("vae_decoder", {}).get("median")),
                f"{r['cold_start_s']:.1f}",
                f"{r['peak_rss_gib']:.2f}",
                f"{r['peak_rss_gib'] / base['peak_rss_gib']:.2f}",
                cell(r.get("size_gib")),
                cell(r.get("export_s"), "{:.0f}"),
                cell(r.get("psnr_vs_own_fp32_db"), "{:.1f}"),
                cell(r.get("psnr_vs_diffusers_db"), "{:.1f}"),
            ]
        )
    lines = [f"### {model} ({size}², 1 step, median of {runs} warm runs)", "", *markdown(columns, cells), ""]
    lines += targets(results, base, model)
    gemm, flops = figures["gemm"], figures.get("unet_flops")
    lines += ["", "Matmul peak in OpenVINO (4096³, median of 5): " + ", ".join(
        f"{k} {v['flops_per_s'] / 1e9:.0f} GFLOP/s ({'; '.join(v['kernels'])})" for k, v in gemm.items()
    ) + "."]  # fmt: skip
    if flops:
        lines += ["", f"{TITLES[model]} UNet, one call at {size // 8}×{size // 8} latents: {flops / 1e9:.0f} GFLOP (torch's FLOP counter; a "
                  "convolution counts as direct, 2 FLOPs per multiply-add, so a Winograd kernel's saving shows as a "
                  "higher rate). Achieved generator rate against the peak of the precision it ran at:", ""]  # fmt: skip
        for r in results:
            gen = (r.get("components_s") or {}).get("generator")
            if r["family"] != "nitro-edge" or not gen or "failed" in r or "low" in r["id"]:
                continue
            precision = "f32" if r["id"].endswith("-f32") else "int8" if "int8" in r["id"] else "bf16"
            rate = flops / gen["median"]
            peak = gemm[precision]["flops_per_s"]
            lines.append(f"- {r['label']}, {r['decoder']}: {rate / 1e9:.0f} GFLOP/s = {rate / peak:.0%} of the "
                         f"{precision} peak")  # fmt: skip
    lines += ["", "Kernels OpenVINO chose (layers per layer type, runtime precision and primitive):", ""]
    for label, k in figures["kernels"].items():
        for component, tally in k["kernels"].items():
            top = "; ".join(f"{key}: {n}" for key, n in list(tally.items())[:4])
            lines.append(f"- {label}, {component}: {top}")
    return lines


def targets(results: list[dict], base: dict, model: str = "sd15") -> list[str]:
    """The issue's targets: each pipeline counted only at >= 40 dB against its own fp32 image. They are
    set on SD1.5; other models get the same comparisons, under a heading that says so."""
    ok = [r for r in results if "failed" not in r and "low" not in r["id"]]

    def good(r):  # a reference row itself, or measured at >= 40 dB
        psnr = r.get("psnr_vs_own_fp32_db")
        return psnr >= 40 if psnr is not None else r.get("ref") is None and r["family"] != "nitro-edge"

    def best(rows):
        rows = [r for r in rows if good(r)]
        return min(rows, key=lambda r: r["end_to_end_s"]["median"]) if rows else None

    def speed(r):
        return r["end_to_end_s"]["median"]

    full = [r for r in ok if r["decoder"] == "full VAE"]
    ours = best([r for r in full if r["family"] == "nitro-edge"])
    lines = [
        "Targets (pipelines counted at ≥ 40 dB against their own fp32 image):"
        if model == "sd15"
        else "The SD1.5 targets' comparisons, for reference (the targets are set on SD1.5; pipelines counted "
        "at ≥ 40 dB against their own fp32 image):",
        "",
    ]
    if ours:
        for family in ("genai", "optimum", "sdcpp"):
            peer = best([r for r in full if r["family"] == family])
            if peer:
                ratio = speed(peer) / speed(ours)
                lines.append(f"- full VAE, {ours['label']} vs best {family} ({peer['label']}): {ratio:.2f}× "
                             f"(target 1.5×: {'met' if ratio >= 1.5 else 'missed'})")  # fmt: skip
        ratio = speed(base) / speed(ours)
        lines.append(f"- full VAE vs diffusers: {ratio:.2f}× (target 4×: {'met' if ratio >= 4 else 'missed'})")
    tiny = [r for r in ok if r["decoder"] == "tiny decoder"]
    ours_tiny, fastsd = (
        best([r for r in tiny if r["family"] == "nitro-edge"]),
        best([r for r in tiny if r["family"] == "fastsd"]),
    )
    if ours_tiny and fastsd:
        ratio = speed(fastsd) / speed(ours_tiny)
        lines.append(f"- tiny decoder, {ours_tiny['label']} vs {fastsd['label']}: {ratio:.2f}× "
                     f"(target 1.5×: {'met' if ratio >= 1.5 else 'missed'})")  # fmt: skip
    if ours_tiny:
        ratio = speed(base) / speed(ours_tiny)
        lines.append(f"- tiny decoder vs diffusers: {ratio:.2f}× (target 15×: {'met' if ratio >= 15 else 'missed'})")
    int8 = [r for r in results if "failed" not in r and r["family"] == "nitro-edge" and "int8" in r["id"]]
    int8 = [r for r in int8 if r["decoder"] == "full VAE"]
    if int8:
        low = min(int8, key=lambda r: r["peak_rss_gib"])
        ratio = low["peak_rss_gib"] / base["peak_rss_gib"]
        lines.append(f"- int8 peak RSS with the full VAE, {low['label']}: {ratio:.2f}× diffusers' "
                     f"(target ≤ 0.4×: {'met' if ratio <= 0.4 else 'missed'})")  # fmt: skip
    return lines


def chart(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter

    rows = [r for r in results if "failed" not in r]
    colours = {"diffusers": "#999999", "optimum": "#dd8452", "fastsd": "#c44e52", "genai": "#8172b3",
               "sdcpp": "#55a868", "nitro-edge": "#4c72b0"}  # fmt: skip
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(rows) + 1.5))
    labels = [f"{r['label']}, {r['decoder']}" for r in rows]
    ax.barh(labels[::-1], [r["end_to_end_s"]["median"] for r in rows][::-1],
            color=[colours[r["family"]] for r in rows][::-1])  # fmt: skip
    ax.set_xscale("log")  # the rows span 0.5 to 150 s
    ax.xaxis.set_major_locator(FixedLocator([0.5, 1, 2, 5, 10, 20, 50, 100, 200]))
    ax.xaxis.set_major_formatter(ScalarFormatter())  # plain seconds, not powers of ten
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("end-to-end latency, s (median, log scale)")
    ax.set_title(f"{title}, 1 step: grey diffusers, orange optimum, red FastSD config,\npurple openvino.genai, "
                 "green stable-diffusion.cpp, blue nitro-edge", fontsize=7)  # fmt: skip
    for i, seconds in enumerate(r["end_to_end_s"]["median"] for r in rows[::-1]):
        ax.text(seconds * 1.03, i, f"{seconds:.2f}", va="center", fontsize=6)
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/peers"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--models", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--sdxl-size", type=int, choices=(512, 1024), default=SIZES["sdxl"])
    parser.add_argument("--rows", nargs="+", metavar="ID", help="measure and report these rows only (default: all)")
    parser.add_argument(
        "--keep-failed", action="store_true", help="report a cached failed row, do not measure it again"
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    def report(message):
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    lines = [
        f"Machine: {cpu_model()}, {cores()} cores, flags {' '.join(cpu_flags()) or 'none of ' + ' '.join(FLAGS)}; "
        f"{time.strftime('%Y-%m-%d')}; `python benchmarks/peers.py --runs {args.runs} --models {' '.join(args.models)}`",
    ]
    everything = {}
    for model in args.models:
        size = args.sdxl_size if model == "sdxl" else SIZES[model]
        folder = model_folder(args.out, model, size)
        results = measure(args.out, args.runs, report, args.rows, model, size, retry=not args.keep_failed)
        figures = machine_figures(folder, size, report)
        lines += ["", *report_md(results, figures, args.runs, model, size)]
        everything[model] = {"size": size, "rows": results, **figures}
        png = args.out / ("peers.png" if model == "sd15" else f"peers-{model}.png")
        chart(results, png, f"{TITLES[model]} {size}²")
        shutil.copy(png, folder / "peers" / png.name)
    (args.out / "peers.md").write_text("\n".join(lines) + "\n")
    (args.out / "peers.json").write_text(json.dumps(everything, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
