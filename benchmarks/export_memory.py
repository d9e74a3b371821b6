"""Peak RSS of exporting a full-size SD1.5-architecture generator (UNet 860M parameters, random
weights, 512x512) to one target, in a fresh process, as a multiple of the generator's fp32 size.
The component is handled as export_bundle handles it: built when first asked for, traced to ONNX,
released, then converted (Core ML converts from the torch module itself).

    python benchmarks/export_memory.py --target onnx        # or openvino, coreml
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time

SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768,
    attention_head_dim=8,
)

CHILD = """
import json, sys, time, resource
from pathlib import Path
import numpy as np, torch, diffusers
from nitro_edge.export.component import ComponentSource
from nitro_edge.models.wrappers import Generator
from nitro_edge.schedule import NoiseSchedule, SamplerParams
from nitro_edge.specs import ModelDims, component_specs
import importlib
target, precision, folder, config = sys.argv[1], sys.argv[2], Path(sys.argv[3]), json.loads(sys.argv[4])
with torch.device("meta"):
    params = sum(p.numel() for p in diffusers.UNet2DConditionModel(**config).parameters())

def load():  # as the export loads a component: when first asked for, released after its trace
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(**config).eval()
    return Generator(unet, SamplerParams(NoiseSchedule(), shift=1000), sdxl=False).eval()

dims = ModelDims("sd15", 512, 512, (768,))
spec = component_specs(dims)["generator"]
rng = np.random.default_rng(0)
example = {"sample": rng.standard_normal((1, 4, 64, 64), dtype=np.float32), "timestep": np.array([999]),
           "encoder_hidden_states": rng.standard_normal((1, 77, 768), dtype=np.float32)}
component = ComponentSource(spec, load, example, [], folder / "scratch")
t0 = time.perf_counter()
component.module
after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
if target != "coreml":  # the order of export_bundle: the ONNX trace first, then the module is dropped
    component.onnx_fp32()
    component.release()
files = importlib.import_module(f"nitro_edge.export.{target}").export(component, folder / "out", precision)
print(json.dumps({"params": params, "rss_after_load": after_load, "seconds": time.perf_counter() - t0,
                  "bytes_on_disk": sum(f.stat().st_size for f in files)}))
"""


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", default="onnx", choices=("onnx", "openvino", "coreml"))
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        child = subprocess.run(
            [sys.executable, "-c", CHILD, args.target, args.precision, tmp, json.dumps(SD15_UNET)],
            capture_output=True,
            text=True,
        )
        if child.returncode != 0:
            sys.exit(child.stderr[-2000:])
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    result = json.loads(child.stdout.strip().splitlines()[-1])
    fp32 = result["params"] * 4
    print(
        json.dumps(
            {
                "target": args.target,
                "precision": args.precision,
                "generator_params": result["params"],
                "generator_fp32_gib": round(fp32 / 2**30, 2),
                "peak_rss_gib": round(peak / 2**30, 2),
                "peak_over_fp32_size": round(peak / fp32, 2),
                "rss_after_building_model_gib": round(result["rss_after_load"] / 2**30, 2),
                "export_seconds": round(result["seconds"], 1),
                "artifact_gib": round(result["bytes_on_disk"] / 2**30, 2),
                "wall_seconds": round(time.perf_counter() - t0, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
