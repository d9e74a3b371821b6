"""ONNX target: trace a reference module with torch.onnx (TorchScript exporter) to one .onnx file.

Models over 2 GB are re-saved with all weights in one external-data file beside the graph.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

from nitro_edge._lazy import require
from nitro_edge.errors import InputError
from nitro_edge.specs import BATCH, ComponentSpec

OPSET = 17
PRECISIONS = ("fp32",)
PROTOBUF_LIMIT = 2 * 1024**3 - 64 * 1024**2  # leave headroom under protobuf's 2 GiB


def export(module, spec: ComponentSpec, example: dict[str, np.ndarray], folder: Path, precision: str) -> list[Path]:
    """Write `spec.name`.onnx (and its .data file if large) into `folder`; return the files written."""
    if precision not in PRECISIONS:
        raise InputError(f"ONNX export supports precision {PRECISIONS} so far, got {precision!r}")
    torch = require("torch", "torch")
    onnx = require("onnx", "onnx")
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{spec.name}.onnx"
    args = tuple(torch.from_numpy(example[t.name]) for t in spec.inputs)
    dynamic = {
        t.name: {axis: BATCH for axis, size in enumerate(t.shape) if size == BATCH}
        for t in (*spec.inputs, *spec.outputs)
    }
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        traced = Path(scratch) / final.name
        with torch.inference_mode(), warnings.catch_warnings():
            # The tracer warns about shape checks it freezes; shapes are static per bundle but batch.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)  # index-op notes; parity checks the result
            torch.onnx.export(
                module,
                args,
                str(traced),
                dynamo=False,
                input_names=[t.name for t in spec.inputs],
                output_names=[t.name for t in spec.outputs],
                dynamic_axes=dynamic,
                opset_version=OPSET,
                do_constant_folding=True,
            )
        total = sum(p.stat().st_size for p in Path(scratch).iterdir())
        if total < PROTOBUF_LIMIT and len(list(Path(scratch).iterdir())) == 1:
            shutil.move(str(traced), final)
            return [final]
        # Large model: the exporter scatters weights over many files; gather them into one.
        model = onnx.load(str(traced), load_external_data=True)
        data = final.with_suffix(".onnx.data")
        onnx.save_model(model, str(final), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
        return [final, data]
