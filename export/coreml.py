"""Core ML target: ML Program (.mlpackage) converted by coremltools from the torch module.

- fp32 / fp16: compute precision of the program.   - int8: linear symmetric int8 weights (fp16 program).
- pal4 / pal6 / pal8: k-means palettisation of weights to 4, 6 or 8 bits (fp16 program).
Integer inputs (input_ids, timestep) are int32 in Core ML; the runtime casts. Minimum
deployment target macOS 14 / iOS 17. Prediction needs macOS; conversion and saving work anywhere.
Not done yet: the Neural Engine attention variant (split einsum) and splitting the generator in two.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from pathlib import Path

import numpy as np

from nitro_edge._lazy import require
from nitro_edge.errors import InputError

PRECISIONS = ("fp32", "fp16", "int8", "pal4", "pal6", "pal8")
COMPUTE_UNITS = "ALL"
DEPLOYMENT_TARGET = "macOS14"  # the same ML Program opset as iOS 17
ARTIFACT_FACTS = {"compute_units": COMPUTE_UNITS, "minimum_deployment_target": f"{DEPLOYMENT_TARGET} / iOS17"}


def export(component, folder: Path, precision: str) -> list[Path]:
    """Write <name>.mlpackage (a folder) at `precision` into `folder`; returns its files."""
    if precision not in PRECISIONS:
        raise InputError(f"the coreml target supports precisions {PRECISIONS}, got {precision!r}")
    ct = require("coremltools", "coreml")
    torch = require("torch", "torch")
    folder.mkdir(parents=True, exist_ok=True)
    chatter = logging.getLogger("coremltools")
    level = chatter.level
    chatter.setLevel(logging.ERROR)  # it logs every op it removes
    try:
        model = _convert(ct, torch, component, precision)
    finally:
        chatter.setLevel(level)
    path = folder / f"{component.name}.mlpackage"
    shutil.rmtree(path, ignore_errors=True)
    model.save(str(path))
    return sorted(p for p in path.rglob("*") if p.is_file())


def _convert(ct, torch, component, precision: str):
    spec = component.spec
    args = tuple(torch.from_numpy(component.example[t.name]) for t in spec.inputs)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(component.module.eval(), args, check_trace=False)
        inputs = [ct.TensorType(name=t.name, shape=component.example[t.name].shape,
                                dtype=np.int32 if t.dtype == "int64" else np.float32) for t in spec.inputs]
        outputs = [ct.TensorType(name=t.name, dtype=np.float32) for t in spec.outputs]
        model = ct.convert(
            traced, inputs=inputs, outputs=outputs, convert_to="mlprogram",
            compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16,
            minimum_deployment_target=getattr(ct.target, DEPLOYMENT_TARGET),
            compute_units=getattr(ct.ComputeUnit, COMPUTE_UNITS), skip_model_load=True,
        )
        opt = ct.optimize.coreml
        # Constants that are not weights (CLIP's causal mask holds -inf) must stay as they are.
        skip = {name: None for name, meta in opt.get_weights_metadata(model, weight_threshold=16).items()
                if not np.isfinite(meta.val).all()}
        if precision == "int8":
            config = opt.OptimizationConfig(
                global_config=opt.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8"), op_name_configs=skip)
            model = opt.linear_quantize_weights(model, config)
        elif precision.startswith("pal"):
            config = opt.OptimizationConfig(
                global_config=opt.OpPalettizerConfig(mode="kmeans", nbits=int(precision[3:])), op_name_configs=skip)
            model = opt.palettize_weights(model, config)
    return model
