"""Export the tiny SD1.5 and SDXL models to every target x precision and print a markdown table:
end-to-end PSNR against torch (the parity gate's figure), worst component SNR, size on disk.

    python benchmarks/export_matrix.py [--out runs/export-matrix]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from nitro_edge.export import TARGETS, export_bundle, target_precisions
from nitro_edge.tiny import build_tiny_pipeline


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    root = args.out or Path(tempfile.mkdtemp(prefix="export-matrix-"))
    rows = []
    for arch in ("sd15", "sdxl"):
        source = build_tiny_pipeline(arch, root / f"tiny-{arch}")
        precisions = dict.fromkeys(p for t in TARGETS for p in target_precisions(t))  # the registry's order
        for precision in precisions:
            targets = [t for t in TARGETS if precision in target_precisions(t)]
            bundle = export_bundle(
                source,
                root / f"{arch}-{precision}",
                targets=targets,
                precision=precision,
                shift=500,
                report=lambda m: None,
            )
            manifest = json.loads((bundle / "manifest.json").read_text())
            for target in targets:
                parity = manifest["parity"][f"{target}/{precision}"]
                size = sum(
                    manifest["files"][f]["bytes"]
                    for c in manifest["components"].values()
                    for f in c["artifacts"][target][precision]["files"]
                )
                kept = [
                    n
                    for n, c in manifest["components"].items()
                    if c["artifacts"][target][precision].get("precision") != precision
                ]
                if parity["numeric"]:
                    psnr = f"{parity['end_to_end_psnr_db']:.1f}"
                    snr = f"{min(c['snr_db'] for c in parity['components'].values()):.1f}"
                else:
                    psnr = snr = "spec only (macOS)"
                rows.append((arch, target, precision, psnr, snr, f"{size / 1e6:.2f}", ", ".join(kept) or "-"))
    print(
        "| model | target | precision | end-to-end PSNR vs torch (dB) | worst component SNR (dB) | size (MB) | kept fp32 |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
