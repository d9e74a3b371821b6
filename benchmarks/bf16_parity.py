"""How far OpenVINO's bf16 compute (the CPU plugin's default where the CPU has bf16 units) moves
images from f32 compute, on one OpenVINO bundle: the same prompts and seeds through
`inference_precision="f32"` and `None`, and the PSNR between them. The f32 images are the bundle's
gated ones (within its recorded end-to-end PSNR of torch fp32).

    python benchmarks/bf16_parity.py BUNDLE [--precision fp32] [--seeds 3]
"""

from __future__ import annotations

import argparse
import json

PROMPTS = (
    "a photograph of an astronaut riding a horse",
    "a red circle at the top left",
    "a watercolour landscape with mountains",
)


def compare(bundle: str, precision: str = "fp32", prompts=PROMPTS, seeds: int = 3) -> dict:
    """The same prompts and seeds at f32 and at the device's default precision; PSNR per seed."""
    import nitro_edge
    from nitro_edge.bundle import Bundle
    from nitro_edge.export.parity import psnr_db

    images = {}
    for label, hint in (("f32", "f32"), ("device default", None)):
        sampler = nitro_edge.load(bundle, backend="openvino", precision=precision, inference_precision=hint)
        images[label] = [sampler.generate(list(prompts), seed=seed, output="numpy") for seed in range(seeds)]
        del sampler
    values = [psnr_db(a, b) for a, b in zip(images["f32"], images["device default"])]
    gate = Bundle.open(bundle, verify=False).manifest["parity"].get(f"openvino/{precision}", {})
    return {
        "bundle": bundle,
        "precision": precision,
        "prompts": len(prompts),
        "seeds": seeds,
        "psnr_db_bf16_vs_f32": [round(v, 2) for v in values],
        "min_psnr_db": round(min(values), 2),
        "gate_psnr_db_f32_vs_torch": gate.get("end_to_end_psnr_db"),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    print(json.dumps(compare(args.bundle, args.precision, seeds=args.seeds)))


if __name__ == "__main__":
    main()
