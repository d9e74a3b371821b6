"""How far OpenVINO's bf16 compute (the CPU plugin's default where the CPU has bf16 units) moves
images from f32 compute, on one OpenVINO bundle: the same prompts and seeds through
`inference_precision="f32"` and `None`, and the PSNR between them. The f32 images are the bundle's
gated ones (within its recorded end-to-end PSNR of torch fp32).

    python benchmarks/bf16_parity.py BUNDLE [--precision fp32] [--seeds 3]
"""

from __future__ import annotations

import argparse
import json

PROMPTS = ("a photograph of an astronaut riding a horse", "a red circle at the top left",
           "a watercolour landscape with mountains")


def main(argv=None) -> None:
    import nitro_edge
    from nitro_edge.bundle import Bundle
    from nitro_edge.export.parity import psnr_db

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    images = {}
    for label, hint in (("f32", "f32"), ("device default", None)):
        sampler = nitro_edge.load(args.bundle, backend="openvino", precision=args.precision, inference_precision=hint)
        images[label] = [sampler.generate(list(PROMPTS), seed=seed, output="numpy") for seed in range(args.seeds)]
        del sampler
    values = [psnr_db(a, b) for a, b in zip(images["f32"], images["device default"])]
    gate = Bundle.open(args.bundle, verify=False).manifest["parity"].get(f"openvino/{args.precision}", {})
    print(json.dumps({"bundle": args.bundle, "precision": args.precision, "prompts": len(PROMPTS),
                      "seeds": args.seeds, "psnr_db_bf16_vs_f32": [round(v, 2) for v in values],
                      "min_psnr_db": round(min(values), 2),
                      "gate_psnr_db_f32_vs_torch": gate.get("end_to_end_psnr_db")}))


if __name__ == "__main__":
    main()
