"""ONNX Runtime backend: one InferenceSession per component, no torch."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nitro_edge._lazy import require
from nitro_edge.errors import BundleError, InputError
from nitro_edge.specs import ComponentSpec, checked, selected


def session(path: Path, providers: list[str] | None = None, threads: int | None = None):
    """An ONNX Runtime session for one model file, with a BundleError if the file is unreadable."""
    ort = require("onnxruntime", "onnx")
    options = ort.SessionOptions()
    if threads is not None:
        if not isinstance(threads, int) or threads < 0:
            raise InputError(f"threads must be a non-negative integer, got {threads!r}")
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    available = ort.get_available_providers()
    providers = providers or ["CPUExecutionProvider"]
    unknown = [p for p in providers if p not in available]
    if unknown:
        raise InputError(f"ONNX Runtime providers {unknown} are not available here; available: {available}")
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types for bad files
        raise BundleError(f"ONNX Runtime cannot load {path.name}: {str(exc).splitlines()[0]}") from exc


def as_component(sess, spec: ComponentSpec):
    names = [t.name for t in spec.outputs]

    def call(**arrays: np.ndarray) -> dict:
        outs = sess.run(names, {t.name: arrays[t.name] for t in spec.inputs})
        return dict(zip(names, outs))

    return checked(spec, call)


def check_external_data(bundle, path: Path, listed: list[str]) -> None:
    """Every external-data file the graph names must be one of the artifact's listed files
    (so inside the bundle, and checksummed)."""
    onnx = require("onnx", "onnx")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf decode errors have several types
        raise BundleError(
            f"{path.name} is not a readable ONNX model: {str(exc).splitlines()[0] if str(exc) else exc!r}"
        ) from exc
    allowed = {(bundle.root / rel).resolve() for rel in listed}
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (path.parent / location).resolve()
        if target not in allowed:
            raise BundleError(f"{path.name} reads weights from {location!r}, which is not a file of this artifact")


def load(
    bundle,
    precision: str = "fp32",
    providers: list[str] | None = None,
    threads: int | None = None,
    ort_format: bool = False,
    components: Sequence[str] | None = None,
) -> dict:
    """ONNX Runtime components for every component of `bundle` at `precision` (or only
    `components`); with `ort_format`, from the .ort files written by `--ort-format` (what ONNX
    Runtime Mobile loads)."""
    comps = {}
    for name, spec in selected(bundle, components):
        path = bundle.artifact_path(name, "onnx", precision)
        files = bundle.artifact(name, "onnx", precision)["files"]
        if ort_format:
            rel = next((f for f in files if f.endswith(".ort")), None)
            if rel is None:
                raise BundleError(f"the onnx {precision} {name} artifact has no .ort file; export with --ort-format")
            path = bundle.path(rel)
        else:
            check_external_data(bundle, path, files)
        comps[name] = as_component(session(path, providers, threads), spec)
    return comps
