"""Core ML backend (macOS only): one MLModel per component; integer inputs are cast to int32."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nitro_edge import registry
from nitro_edge._lazy import require
from nitro_edge.errors import BundleError, InputError, MissingExtraError
from nitro_edge.specs import ComponentSpec, checked, selected

COMPUTE_UNITS = registry.target("coreml").options["compute_units"]


def available() -> bool:
    return registry.backend("coreml").predicts_here()


def as_component(models: list, spec: ComponentSpec):
    """One package, or chunks run in order: each reads what it needs from the inputs and the
    outputs of the chunks before it."""
    names = [t.name for t in spec.outputs]
    wanted = [[i.name for i in m.get_spec().description.input] for m in models]

    def call(**arrays: np.ndarray) -> dict:
        batch = arrays[spec.inputs[0].name].shape[0]
        outs = {n: [] for n in names}
        for i in range(batch):  # the package has static batch 1
            feed = {
                t.name: arrays[t.name][i : i + 1].astype(np.int32 if t.dtype == "int64" else np.float32)
                for t in spec.inputs
            }
            for model, inputs in zip(models, wanted):
                feed.update(model.predict({k: feed[k] for k in inputs}))
            for n in names:
                outs[n].append(np.asarray(feed[n], dtype=np.float32))
        return {n: np.concatenate(v) for n, v in outs.items()}

    return checked(spec, call)


def load(bundle, precision: str = "fp16", compute_units: str = "ALL", components: Sequence[str] | None = None) -> dict:
    """Core ML components (all, or only `components`); needs macOS (prediction is not available elsewhere)."""
    if not available():
        raise MissingExtraError("the coreml backend predicts on macOS only; on this platform use onnx or openvino")
    ct = require("coremltools", "coreml")
    if compute_units not in COMPUTE_UNITS:
        raise InputError(f"compute_units must be one of {COMPUTE_UNITS}, got {compute_units!r}")
    comps = {}
    for name, spec in selected(bundle, components):
        models = []
        for path in bundle.artifact_parts(name, "coreml", precision):
            try:
                models.append(ct.models.MLModel(str(path), compute_units=getattr(ct.ComputeUnit, compute_units)))
            except Exception as exc:  # coremltools raises several types for bad packages
                raise BundleError(f"Core ML cannot load {path.name}: {str(exc).splitlines()[0]}") from exc
        comps[name] = as_component(models, spec)
    return comps


def check_spec(bundle, precision: str) -> dict:
    """Without prediction (Linux): each package's inputs, outputs, shapes, dtypes and weight precision
    against the component spec. Returns {component: description}; raises BundleError on mismatch."""
    ct = require("coremltools", "coreml")
    report = {}
    for name, spec in bundle.specs.items():
        parts = bundle.artifact_parts(name, "coreml", precision)
        models = [ct.models.MLModel(str(path), skip_model_load=True) for path in parts]
        descs = [m.get_spec().description for m in models]
        got_in = {i.name: (list(i.type.multiArrayType.shape), i.type.multiArrayType.dataType) for i in descs[0].input}
        label = parts[0].name
        for t in spec.inputs:
            if t.name not in got_in:
                raise BundleError(f"{label} lacks input {t.name!r}; it has {sorted(got_in)}")
            want = [1 if d == "batch" else d for d in t.shape]
            if got_in[t.name][0] != want:
                raise BundleError(f"{label} input {t.name} has shape {got_in[t.name][0]}, expected {want}")
        known = {t.name for t in spec.inputs}
        for path, desc in zip(parts, descs):  # each chunk reads only inputs or earlier chunks' outputs
            stray = [i.name for i in desc.input if i.name not in known]
            if stray:
                raise BundleError(f"{path.name} needs {stray}, which no earlier chunk produces")
            known |= {o.name for o in desc.output}
        got_out = [o.name for o in descs[-1].output]
        if got_out != [t.name for t in spec.outputs]:
            raise BundleError(f"{parts[-1].name} outputs are {got_out}, expected {[t.name for t in spec.outputs]}")
        weights: dict[str, int] = {}
        for model in models:
            for key, count in _weight_dtypes(model).items():
                weights[key] = weights.get(key, 0) + count
        report[name] = {"inputs": sorted(got_in), "outputs": got_out, "weight_dtypes": weights}
        if len(parts) > 1:
            report[name]["chunks"] = [p.name for p in parts]
    return report


def _weight_dtypes(model) -> dict[str, int]:
    """Count of weight tensors (over 16 elements) by how the ML Program stores them:
    `float32`, `float16`, `int8` (affine dequantised) or `palette4/6/8` (look-up table of 2^n)."""
    counts: dict[str, int] = {}
    program = model.get_spec().mlProgram
    for function in program.functions.values():
        for block in function.block_specializations.values():
            for op in block.operations:
                if op.type == "const":
                    tensor = op.outputs[0].type.tensorType
                    key = _dtype_name(tensor.dataType) if _size(tensor) > 16 else None
                elif op.type == "constexpr_affine_dequantize":
                    key = _dtype_name(op.attributes["quantized_data"].type.tensorType.dataType)
                elif op.type == "constexpr_lut_to_dense":
                    entries = _size(op.attributes["lut"].type.tensorType)
                    key = f"palette{entries.bit_length() - 1}"
                else:
                    key = None
                if key:
                    counts[key] = counts.get(key, 0) + 1
    return counts


def _size(tensor) -> int:
    size = 1
    for d in tensor.dimensions:
        size *= d.constant.size or 1
    return size


def _dtype_name(code: int) -> str:
    from coremltools.proto import MIL_pb2

    return MIL_pb2.DataType.Name(code).lower()
