"""The machine's figures (CPU, GEMM peak, UNet FLOPs) and the report: markdown tables per model and a chart."""

from __future__ import annotations

import os
import time
from pathlib import Path


def markdown(columns: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table; every row gets exactly one cell per column (missing cells are empty)."""
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [str(c) for c in row][: len(columns)]
        out.append("| " + " | ".join(cells + [""] * (len(columns) - len(cells))) + " |")
    return out


def cell(value, fmt: str = "{:.2f}") -> str:
    """A table cell: the value formatted, or empty when there is none."""
    return "" if value is None else fmt.format(value)


COLUMNS = [
    "pipeline",
    "decoder",
    "end-to-end s",
    "× diffusers speed",
    "text s",
    "generator s",
    "decoder s",
    "cold start s",
    "peak RSS GiB",
    "RSS / diffusers",
    "size GiB",
    "export s",
    "export peak RSS GiB",
    "parity dB",
]


def table(rows: list[dict]) -> list[str]:
    """One model's rows (as measured, with ratios to its diffusers row)."""
    base = next(r for r in rows if r["id"] == "diffusers")
    cells = []
    for r in rows:
        export = [
            cell(r.get("size_gib")),
            cell(r.get("export_s"), "{:.0f}"),
            cell(r.get("export_peak_rss_gib"), "{:.1f}"),
        ]
        if "failed" in r:
            cells.append([r["label"], r["decoder"], r["failed"]])
        elif "not_run" in r:  # exported only
            cells.append(
                [
                    r["label"],
                    r["decoder"],
                    f"not run: {r['not_run']}",
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    *export,
                    "spec checked",
                ]
            )
        else:
            comps = r.get("components_s") or {}
            text = sum(comps[k]["median"] for k in comps if k.startswith("text_encoder")) if comps else None
            parity = " ".join(f"{v:.0f}" for v in (r.get("parity_psnr_db") or {}).values() if v is not None)
            bf16 = r.get("bf16_vs_f32_psnr_db")
            if bf16 is not None:  # a number, or why it could not be measured
                parity += f"; bf16 vs f32: {bf16:.1f}" if isinstance(bf16, float) else f"; bf16 vs f32: {bf16}"
            e2e = r["end_to_end_s"]["median"]
            cells.append(
                [
                    r["label"],
                    r["decoder"],
                    f"{e2e:.2f}",
                    f"{base['end_to_end_s']['median'] / e2e:.2f}",
                    cell(text),
                    cell(comps.get("generator", {}).get("median")),
                    cell(comps.get("vae_decoder", {}).get("median")),
                    f"{r['cold_start_s']:.1f}",
                    f"{r['peak_rss_gib']:.2f}",
                    f"{r['peak_rss_gib'] / base['peak_rss_gib']:.2f}",
                    *export,
                    parity,
                ]
            )
    title = f"### {base['model']} ({base['size']}², 1 step, median of {base['runs']} warm runs)"
    return [title, "", *markdown(COLUMNS, cells)]


def chart(all_rows: dict[str, list[dict]], path: Path) -> None:
    """Horizontal bars of end-to-end latency, one panel per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(all_rows), figsize=(6.5 * len(all_rows), 5.5), squeeze=False)
    for ax, rows in zip(axes[0], all_rows.values()):
        rows = [r for r in rows if "failed" not in r and "not_run" not in r]
        labels = [f"{r['label'].replace('nitro-edge ', 'ne ')}\n{r['decoder']}" for r in rows]
        med = [r["end_to_end_s"]["median"] for r in rows]
        colors = [
            "#999999" if r["id"] == "diffusers" else "#dd8452" if r["id"].startswith("optimum") else "#4c72b0"
            for r in rows
        ]
        ax.barh(labels[::-1], med[::-1], color=colors[::-1])
        ax.set_xlabel("end-to-end latency, s (median)")
        ax.set_title(f"{rows[0]['model']}, {rows[0]['size']}², 1 step")
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle("grey: diffusers torch fp32, orange: optimum, blue: nitro-edge")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def gemm_peak() -> float:
    """fp32 FLOP/s of a 4096³ matmul in torch (best of 5)."""
    import torch

    a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
    a @ b
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * 4096**3 / min(times)


def unet_flops(source: Path, size: int | None = None) -> float:
    """FLOPs of one UNet call at `size`² pixels (the model's native size by default), batch 1, by
    torch's FLOP counter."""
    import diffusers
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    unet = diffusers.UNet2DConditionModel.from_pretrained(str(source / "unet")).eval()
    latent = size // 8 if size else unet.config.sample_size
    added = None
    if unet.config.addition_embed_type == "text_time":
        added = {"text_embeds": torch.randn(1, 1280), "time_ids": torch.randn(1, 6)}
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet(
            torch.randn(1, 4, latent, latent),
            torch.tensor([999]),
            torch.randn(1, 77, unet.config.cross_attention_dim),
            added_cond_kwargs=added,
        )
    return float(counter.get_total_flops())


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_bf16", "amx_int8", "amx_tile")


def cpu_flags() -> list[str]:
    """The CPU flags that decide which low-precision kernels can run (from /proc/cpuinfo, as lscpu shows)."""
    try:
        line = next(x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("flags"))
    except (OSError, StopIteration):
        return []
    have = set(line.split(":", 1)[1].split())
    return [f for f in FLAGS if f in have]


def cores() -> int:
    return len(os.sched_getaffinity(0))
