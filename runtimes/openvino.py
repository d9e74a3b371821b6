"""OpenVINO backend: IR compiled for a device (CPU, GPU, NPU). The IR has static batch 1, so a
batch is run one item at a time."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nitro_edge._lazy import require
from nitro_edge.errors import BundleError, InputError
from nitro_edge.specs import ComponentSpec, checked, selected

HINTS = ("LATENCY", "THROUGHPUT")


def as_component(compiled, spec: ComponentSpec):
    names = [t.name for t in spec.outputs]
    request = compiled.create_infer_request()

    def call(**arrays: np.ndarray) -> dict:
        batch = arrays[spec.inputs[0].name].shape[0]
        outs = {n: [] for n in names}
        for i in range(batch):
            result = request.infer({t.name: arrays[t.name][i : i + 1] for t in spec.inputs})
            for n in names:
                outs[n].append(np.array(result[compiled.output(n)]))
        return {n: np.concatenate(v).astype(np.float32, copy=False) for n, v in outs.items()}

    return checked(spec, call)


def load(
    bundle,
    precision: str = "fp32",
    device: str = "CPU",
    cache_dir: str | None = None,
    hint: str = "LATENCY",
    threads: int | None = None,
    inference_precision: str | None = "auto",
    components: Sequence[str] | None = None,
) -> dict:
    """OpenVINO components (all, or only `components`) compiled for `device`; `cache_dir` keeps
    compiled blobs between runs.

    `inference_precision` "auto": int8 bundles compute at the device's default (bf16 where the CPU
    has it: the weights are 8-bit already, and f32 would unpack them to f32 in memory; their gate
    measured them so); fp32 and fp16 bundles compute at the device's default too when their export
    gate held that precision to the fp16 floors on a CPU with the same default (the manifest's
    `device_default` variant), else in f32. None: the device's default; or "f32"/"f16"/"bf16".
    Each component says what it computes in as its `compute` attribute.
    """
    ov = require("openvino", "openvino")
    core = ov.Core()
    if device.split(":")[0] not in {d.split(".")[0] for d in core.available_devices} and device != "AUTO":
        raise InputError(f"OpenVINO device {device!r} is not available here; available: {core.available_devices}")
    if inference_precision == "auto":
        inference_precision = resolve_inference_precision(bundle, precision, device)
    config = compile_config(precision, hint, threads, inference_precision, cache_dir)
    compute = inference_precision or _device_default(core, device)
    comps = {}
    for name, spec in selected(bundle, components):
        path = bundle.artifact_path(name, "openvino", precision)
        try:
            # From the path: OpenVINO maps the weights file instead of holding a read copy beside
            # the compiled model, and with CACHE_DIR it can skip reading the IR altogether.
            compiled = core.compile_model(str(path), device, config)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses for bad IR files
            raise BundleError(f"OpenVINO cannot load {path.name}: {str(exc).splitlines()[0]}") from exc
        comps[name] = as_component(compiled, spec)
        comps[name].compute = compute
    return comps


def resolve_inference_precision(bundle, precision: str, device: str = "CPU") -> str | None:
    """What "auto" means for this bundle here (see load()): None for the device's default, else "f32"."""
    if precision.startswith("int8"):
        return None
    parity = bundle.manifest.get("parity", {}).get(f"openvino/{precision}", {})
    variant = parity.get("variants", {}).get("device_default", {})
    ov = require("openvino", "openvino")
    here = _device_default(ov.Core(), device)
    if here == "f32" or (variant.get("passed") and variant.get("inference_precision") == here):
        return None
    return "f32"


def compute_precision(
    bundle, precision: str, device: str = "CPU", inference_precision: str | None = "auto", **_
) -> str:
    """What load() would compute in, without compiling anything."""
    ov = require("openvino", "openvino")
    if inference_precision == "auto":
        inference_precision = resolve_inference_precision(bundle, precision, device)
    return inference_precision or _device_default(ov.Core(), device)


def _device_default(core, device: str) -> str:
    try:
        return _type_name(core.get_property(device.split(":")[0], "INFERENCE_PRECISION_HINT"))
    except Exception:  # a device without the property (some NPUs) computes in what it has
        return "device default"


def compile_config(
    precision: str,
    hint: str = "LATENCY",
    threads: int | None = None,
    inference_precision: str | None = "auto",
    cache_dir: str | None = None,
) -> dict:
    """The OpenVINO properties load() compiles with. Here "auto" has no bundle to read: the device's
    default for int8 bundles, f32 for the others (load() resolves "auto" from the bundle first)."""
    if hint not in HINTS:
        raise InputError(f"hint must be one of {HINTS}, got {hint!r}")
    if inference_precision == "auto":
        inference_precision = None if precision.startswith("int8") else "f32"
    config = {"PERFORMANCE_HINT": hint}
    if inference_precision:
        config["INFERENCE_PRECISION_HINT"] = inference_precision
    if cache_dir:
        config["CACHE_DIR"] = str(cache_dir)
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


def _type_name(value) -> str:
    """An OpenVINO element type as its short name (bf16, f32), whatever the binding returns."""
    return value.get_type_name() if hasattr(value, "get_type_name") else str(value).lower()
