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
import functools
import json
import shutil
import time
from pathlib import Path

from scale.children import ChildFailed, in_child
from scale.models import SIZES, build, build_taesd
from scale.report import chart, cores, cpu_model, gemm_peak, table, unet_flops
from scale.rows import Export, Row, plan


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
        cached = rows_dir / f"{row.id}.json"
        if cached.is_file():
            results.append(json.loads(cached.read_text()))
            report(f"{model} {row.id}: reused {cached}")
            continue
        export, exp = row.export, {}
        made = folder / export.folder_name(size) if export else None
        try:
            if export is not None:
                if export.key() not in exports:
                    exports[export.key()] = _attempt(
                        functools.partial(_export, export, made, source, taesd, model, size)
                    )
                exp = exports[export.key()]
                if "failed" in exp:
                    raise ChildFailed(exp["failed"])
            run = _run(row, made, source, model, runs, size)
        except ChildFailed as exc:  # recorded, and the run goes on
            run = {"failed": str(exc)}
            exp = {} if "failed" in exp else exp
        result = {
            "id": row.id,
            "label": row.label,
            "decoder": row.decoder,
            "model": model,
            "size": size,
            "runs": runs,
            **run,
            "export_s": exp.get("export_s"),
            "export_peak_rss_gib": exp.get("peak_rss_gib"),
            "parity_psnr_db": exp.get("parity_psnr_db"),
        }
        cached.write_text(json.dumps(result, indent=2))
        if made is not None and made.exists() and not keep and all(r.export != export for r in rows[i + 1 :]):
            shutil.rmtree(made)  # measured; full-size bundles would not all fit on the disk
        report(
            f"{model} {row.id}: "
            + (
                result.get("failed")
                or result.get("not_run")
                or f"{result['end_to_end_s']['median']:.2f} s, peak RSS {result['peak_rss_gib']:.2f} GiB"
            )
        )
        results.append(result)
    return results


def _export(export: Export, folder: Path, source: Path, taesd: Path, model: str, size: int) -> dict:
    """Make the export behind a row once (an existing folder is reused: {} then)."""
    if export.kind == "optimum":
        if (folder / "model_index.json").is_file():
            return {}
        return in_child("child_optimum_export", export.runtime, model, str(source), str(folder))
    if (folder / "manifest.json").is_file():
        return {}
    return in_child(
        "child_export",
        str(source),
        str(folder),
        list(export.targets),
        export.precision,
        str(taesd) if export.decoder == "tiny" else None,
        export.options,
        size,
    )


def _run(row: Row, folder: Path | None, source: Path, model: str, runs: int, size: int) -> dict:
    """The row's timed run, in a child process (or the export's size only, for a row without a run)."""
    run = row.run
    if run is None:
        return {"not_run": "prediction needs macOS", "size_gib": _size_gib(folder)}
    if run.kind == "diffusers":
        return in_child("child_diffusers", str(source), model, runs, size)
    if run.kind == "optimum":
        result = in_child("child_optimum_run", run.backend, model, str(folder), runs, size, run.options)
        result["size_gib"] = _size_gib(folder)
        return result
    result = in_child("child_bench", str(folder), run.backend, run.precision, runs, run.options)
    if run.device_default:  # how far the device's default precision moves this bundle's image from f32 compute
        bf16 = _attempt(lambda: in_child("child_bf16_parity", str(folder), run.precision))
        result["bf16_vs_f32_psnr_db"] = bf16.get("min_psnr_db", bf16.get("failed"))
    return result


def _size_gib(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**30


def _attempt(fn) -> dict:
    try:
        return fn()
    except ChildFailed as exc:
        return {"failed": str(exc)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/full-scale"))
    parser.add_argument("--models", nargs="+", default=["sd15", "sd21", "sdxl"], choices=list(SIZES))
    parser.add_argument(
        "--optimum",
        nargs="*",
        default=["sd15"],
        choices=list(SIZES),
        help="models to compare with optimum's pipelines (default sd15)",
    )
    parser.add_argument(
        "--sdxl-size",
        type=int,
        nargs="+",
        default=[1024],
        choices=[512, 1024],
        help="SDXL resolution(s); 1024 is native, 512 is kept in OUT/sdxl/rows-512",
    )
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
            all_rows[key] = measure_model(
                model, size, args.out, args.runs, model in args.optimum, args.keep_bundles, report
            )
    peak = gemm_peak()
    lines = [
        f"Machine: {cpu_model()}, {cores()} cores; {time.strftime('%Y-%m-%d')}; `python benchmarks/full_scale.py "
        f"--models {' '.join(args.models)} --sdxl-size {' '.join(map(str, args.sdxl_size))} --runs {args.runs}`",
        "",
    ]
    for rows in all_rows.values():
        lines += table(rows) + [""]
    flops = unet_flops(args.out / "sd15" / "source") if "sd15" in all_rows else None
    if flops:
        best = min(
            (
                r
                for r in all_rows["sd15"]
                if r["id"].startswith("nitro")
                and r.get("components_s", {}).get("generator")
                and "fp32" in r["id"]
                and "default" not in r["id"]
            ),
            key=lambda r: r["components_s"]["generator"]["median"],
        )
        achieved = flops / best["components_s"]["generator"]["median"]
        lines.append(
            f"fp32 GEMM peak (4096³, torch): {peak / 1e9:.0f} GFLOP/s. SD1.5 UNet, one call at 64×64 latents: "
            f"{flops / 1e9:.0f} GFLOP (torch's FLOP counter); fastest fp32 generator ({best['label']}): "
            f"{achieved / 1e9:.0f} GFLOP/s = {achieved / peak:.0%} of the GEMM peak."
        )
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    (args.out / "results.json").write_text(
        json.dumps({"rows": all_rows, "gemm_peak_flops": peak, "unet_flops": flops}, indent=2)
    )
    chart(all_rows, args.out / "results.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
