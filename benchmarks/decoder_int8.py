"""What each choice in nitro-edge's VAE decoder export buys: the full-size decoder (published
configuration, random weights, as in peers.py) as diffusers writes it and with its upsampling folded
(nitro_edge.models.upsampling), without int8 and quantised by NNCF with one more part kept float at
each row, against torch on the gate's latents (the generator's outputs for the parity prompts): image
PSNR, output SNR, latency at the device's default precision, the convolutions' kernels and time.

    python benchmarks/decoder_int8.py [--model sd15] [--size 512] [--out runs/decoder-int8] [--runs 3]
                                      [--source PIPELINE_FOLDER]

Rows: the decoder without int8 (f32 and the device default), as diffusers writes it and folded (what
every bundle holds since 2026-12-07); NNCF's own placement (what int8-act did before 2026-12-07: every
quantisable op, only the two latent-resolution convolutions float); then one more part float (or the
upsampling folded) per row, down to nitro-edge's int8-act: the residual stream, normalisation and
attention; the 1x1 shortcuts; the output convolution; the upsampling folded with its convolutions in
int8; the upsampling convolutions float, not folded and folded. Calibration: the 16 decoder inputs an
int8-act export calibrates on.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import time
from pathlib import Path

from scale.models import build

ROWS = (  # label, decoder IR, float_operations, float_convolutions, float_output (None: no int8)
    ("no int8, diffusers' upsampling", "unfolded", None, None, None),
    ("no int8, upsampling folded", "folded", None, None, None),
    ("NNCF's placement (int8-act before 2026-12-07)", "unfolded", (), "latent", False),
    ("+ residual stream, normalisation, attention float", "unfolded", "operations", "latent", False),
    ("+ 1x1 shortcuts float", "unfolded", "operations", "shortcuts", False),
    ("+ output convolution float", "unfolded", "operations", "shortcuts", True),
    ("+ upsampling folded", "folded", "operations", "shortcuts", True),
    ("+ upsampling convolutions float, not folded", "unfolded", "operations", "residual", True),
    ("+ upsampling convolutions float, folded (int8-act)", "folded", "operations", "residual", True),
)


def record(source: Path, size: int | None, out: Path) -> dict:
    """The decoder's fp32 IRs (OUT/unfolded.xml as diffusers writes it, OUT/folded.xml as export converts
    it), its calibration inputs and the gate's latents with torch's images, from the pipeline folder
    `source` at `size` (None: its own), made once."""
    import pickle

    cache = out / "reference.pkl"
    if cache.is_file():
        return pickle.loads(cache.read_bytes())
    import openvino as ov

    from nitro_edge.export.component import ComponentSource, load_for_export
    from nitro_edge.export.reference import reference_run
    from nitro_edge.models.loading import load_module
    from nitro_edge.sources import resolve_source

    src = resolve_source(source)
    ref = reference_run(src, size, size, "int8-act")
    for label, load in (("unfolded", load_module), ("folded", load_for_export)):
        decoder = ComponentSource(
            ref.specs["vae_decoder"],
            functools.partial(load, src, "vae_decoder"),
            ref.example("vae_decoder"),
            [],
            out / f"scratch-{label}",
        )
        fp32 = ov.convert_model(str(decoder.onnx_fp32()))
        fp32.reshape({"latents": [1, *ref.dims.latent_shape]})
        ov.save_model(fp32, str(out / f"{label}.xml"), compress_to_fp16=False)
    data = {
        "calibration": [c["latents"] for c in ref.calibration["vae_decoder"]],
        "latents": ref.inputs["vae_decoder"]["latents"],
        "images": ref.outputs["vae_decoder"]["image"],
    }
    cache.write_bytes(pickle.dumps(data))
    return data


def quantise(path: Path, calibration: list, operations, convolutions, output: bool):
    import nncf
    import openvino as ov

    from nitro_edge.export import openvino as target

    model = ov.Core().read_model(str(path))
    options = target.decoder_quantize_options(
        nncf,
        model,
        float_operations=target.FLOAT_OPERATIONS if operations == "operations" else (),
        float_convolutions={
            "latent": target.LATENT_CONVOLUTIONS,
            "shortcuts": (*target.LATENT_CONVOLUTIONS, ".*conv_shortcut.*"),
            "residual": target.FLOAT_CONVOLUTIONS,
        }[convolutions],
        float_output=output,
    )
    return nncf.quantize(model, nncf.Dataset(calibration), subset_size=len(calibration), **options)


def measure(model, data: dict, runs: int, hint: str | None) -> dict:
    """PSNR/SNR of the decoded latents against torch, median latency of one decode, conv kernels and time."""
    import numpy as np
    import openvino as ov

    from nitro_edge.export.parity import psnr_db, snr_db

    config = {"PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": True}
    if hint:
        config["INFERENCE_PRECISION_HINT"] = hint
    compiled = ov.Core().compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    latents = data["latents"]
    images = np.concatenate(
        [np.array(request.infer({"latents": latents[i : i + 1]})[compiled.output(0)]) for i in range(len(latents))]
    )
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        request.infer({"latents": latents[:1]})
        times.append(time.perf_counter() - start)
    kernels = collections.Counter()
    seconds = collections.Counter()
    for layer in request.profiling_info:
        if layer.node_type == "Convolution":
            kernels[layer.exec_type] += 1
            seconds[layer.exec_type] += layer.real_time.total_seconds()
    return {
        "psnr_db": round(psnr_db(data["images"], images), 2),
        "snr_db": round(snr_db(data["images"], images), 2),
        "decode_s": round(float(np.median(times)), 3),
        "convolutions": {k: {"layers": n, "s": round(seconds[k], 3)} for k, n in kernels.most_common()},
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("sd15", "sd21", "sdxl"), default="sd15")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--out", type=Path, default=Path("runs/decoder-int8"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--source", type=Path, help="a pipeline folder instead of the full-size --model")
    args = parser.parse_args(argv)
    out = args.out / f"{args.source.name if args.source else args.model}-{args.size}"
    out.mkdir(parents=True, exist_ok=True)
    data = record(args.source or build(args.model, args.out / args.model / "source"), args.size, out)
    results = []
    for label, ir, operations, convolutions, output in ROWS:
        if output is None:
            for hint in ("f32", None):
                row = measure(str(out / f"{ir}.xml"), data, args.runs, hint)
                results.append({"row": f"{label}, {hint or 'device default'}", **row})
                print(json.dumps(results[-1]), flush=True)
            continue
        started = time.perf_counter()
        quantised = quantise(out / f"{ir}.xml", data["calibration"], operations, convolutions, output)
        row = measure(quantised, data, args.runs, None)
        results.append({"row": label, "quantise_s": round(time.perf_counter() - started, 1), **row})
        print(json.dumps(results[-1]), flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    name = args.source or args.model
    print(f"\n{name} VAE decoder at {args.size}², {len(data['latents'])} latents of the gate's prompts\n")
    print("| decoder | image PSNR vs torch dB | SNR dB | decode s (median) | convolutions: kernel, layers, s |")
    print("|---|---|---|---|---|")
    for r in results:
        convs = "; ".join(f"{k} {v['layers']} ({v['s']:.2f} s)" for k, v in r["convolutions"].items())
        print(f"| {r['row']} | {r['psnr_db']:.1f} | {r['snr_db']:.1f} | {r['decode_s']:.2f} | {convs} |")


if __name__ == "__main__":
    main()
