"""The measurements, each run in a fresh process (so its peak RSS is its own): `in_child(name, *args)`
runs CHILDREN[name](*args) through this file and returns its JSON result with wall time and peak RSS."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROMPT = "a photograph of an astronaut riding a horse"


def _stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def child_diffusers(source: str, model: str, runs: int, size: int, image: str | None = None) -> dict:
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
    return _run_pipeline(pipe, runs, size, t0, timings, image)


def timed_calls(call, runs: int, t0: float, image: str | None = None) -> dict:
    """`call(i)` returns the image of seed i: one cold call (seed 0, its image saved to `image` if
    given), then `runs` warm ones; cold start counts from `t0` (before loading)."""
    times = []
    for i in range(runs + 1):
        start = time.perf_counter()
        out = call(i)
        times.append(time.perf_counter() - start)
        if i == 0:
            cold = time.perf_counter() - t0
            if image:
                out.save(image)
    return {"cold_start_s": cold, "end_to_end_s": _stats(times[1:]), "components_s": {}}


def _run_pipeline(pipe, runs: int, size: int, t0: float, timings: dict | None = None, image: str | None = None) -> dict:
    """A diffusers-style pipeline through timed_calls; `timings` (component times) keep the warm runs only."""
    import torch

    pipe.set_progress_bar_config(disable=True)

    def call(i):
        if i == 1:
            for v in (timings or {}).values():
                v.clear()
        return pipe(
            PROMPT,
            num_inference_steps=1,
            guidance_scale=0.0,
            height=size,
            width=size,
            generator=torch.Generator().manual_seed(i),
        ).images[0]

    result = timed_calls(call, runs, t0, image)
    result["components_s"] = {k: _stats(v) for k, v in (timings or {}).items()}
    return result


def _optimum_class(kind: str, model: str):
    xl = "XL" if model == "sdxl" else ""
    if kind == "ort":
        import optimum.onnxruntime as module

        return getattr(module, f"ORTStableDiffusion{xl}Pipeline")
    import optimum.intel as module

    return getattr(module, f"OVStableDiffusion{xl}Pipeline")


def child_optimum_export(kind: str, model: str, source: str, out: str, int8: bool = False) -> dict:
    """optimum's export of `source`: fp32 (as nitro-edge exports it), or with int8 weights (OpenVINO)."""
    cls = _optimum_class(kind, model)
    t0 = time.perf_counter()
    extra = {"load_in_8bit": int8, "compile": False} if kind == "openvino" else {}
    pipe = cls.from_pretrained(source, export=True, **extra)
    pipe.save_pretrained(out)
    return {"export_s": time.perf_counter() - t0}


def child_optimum_run(
    kind: str, model: str, folder: str, runs: int, size: int, ov_config: dict | None, image: str | None = None
) -> dict:
    cls = _optimum_class(kind, model)
    t0 = time.perf_counter()
    if kind == "openvino":
        # Dynamic shapes, optimum's default: its static reshape assumes guidance (UNet batch 2).
        pipe = cls.from_pretrained(folder, ov_config=ov_config or {})
    else:
        pipe = cls.from_pretrained(folder)
    return _run_pipeline(pipe, runs, size, t0, image=image)


def child_export(
    source: str, bundle: str, targets: list, precision: str, tiny: str | None, options: dict, size: int
) -> dict:
    from nitro_edge.export import export_bundle

    t0 = time.perf_counter()
    export_bundle(
        source,
        bundle,
        targets=targets,
        precision=precision,
        tiny_vae=tiny,
        options=options,
        height=size,
        width=size,
        report=lambda m: print(m, file=sys.stderr, flush=True),
    )
    manifest = json.loads((Path(bundle) / "manifest.json").read_text())
    parity = {k: v.get("end_to_end_psnr_db") for k, v in manifest["parity"].items()}
    return {"export_s": time.perf_counter() - t0, "parity_psnr_db": parity}


def child_bench(
    bundle: str, backend: str, precision: str, runs: int, options: dict, image: str | None = None, memory="normal"
) -> dict:
    from nitro_edge.bench import measure

    r = measure(bundle, backend, precision, runs, 1, options, memory, prompt=PROMPT, image=image)
    return {
        "cold_start_s": r["cold_start_s"],
        "end_to_end_s": r["end_to_end_s"],
        "components_s": r["components_s"],
        "size_gib": r["size_mib"] / 1024,
    }


def child_bf16_parity(bundle: str, precision: str) -> dict:
    """PSNR between OpenVINO's f32 and device-default (bf16 here) images: one prompt, one seed."""
    sys.path.insert(0, str(Path(__file__).parents[1]))
    from bf16_parity import compare

    return compare(bundle, precision, prompts=(PROMPT,), seeds=1)


class ChildFailed(RuntimeError):
    pass


CHILDREN = {
    f.__name__: f
    for f in (child_diffusers, child_optimum_export, child_optimum_run, child_export, child_bench, child_bf16_parity)
}


def in_child(name: str, *args, script: str = __file__) -> dict:
    """Run CHILDREN[name](*args) of `script` (this file by default) in a fresh process; its result plus
    wall time and peak RSS."""
    t0 = time.perf_counter()
    child = subprocess.run([sys.executable, script, name, json.dumps(args)], capture_output=True, text=True)
    if child.returncode != 0:
        lines = [line for line in child.stderr.strip().splitlines() if line.strip()] or ["no output"]
        reason = "killed by signal 9 (out of memory?)" if child.returncode == -9 else lines[-1][:300]
        print(child.stderr[-4000:], file=sys.stderr, flush=True)
        raise ChildFailed(f"{name} failed: {reason}")
    result = json.loads(child.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - t0
    return result


def child_main(children: dict, name: str, args_json: str) -> None:
    result = children[name](*json.loads(args_json))
    from nitro_edge.bench import peak_rss_bytes

    result["peak_rss_gib"] = peak_rss_bytes() / 2**30
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    child_main(CHILDREN, sys.argv[1], sys.argv[2])
