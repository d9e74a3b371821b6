"""ONNX target: fp32 (traced by torch.onnx's TorchScript exporter), fp16 and int8.

- fp16: onnxruntime's float16 converter with fp32 inputs/outputs kept (keep_io_types); ops
  that overflow in fp16 (LayerNorm/GroupNorm statistics, Softmax, Pow, Exp) stay fp32.
- int8: dynamic quantisation (weights int8, activations quantised at run time per tensor) of the
  token embedding (Gather) and MatMul/Gemm (attention, projections). Dynamic rather than static QDQ: it
  needs no calibration set per model and ONNX Runtime's CPU kernels for it are mature; convolutions
  stay fp32 (ConvInteger is slow or missing on several execution providers).
Models over 2 GB keep their weights in one external-data file beside the graph.
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
PRECISIONS = ("fp32", "fp16", "int8")
PROTOBUF_LIMIT = 2 * 1024**3 - 64 * 1024**2  # leave headroom under protobuf's 2 GiB
FP16_KEEP_FP32 = ["LayerNormalization", "GroupNormalization", "InstanceNormalization", "Softmax", "Pow", "Exp",
                  "ReduceMean", "Sqrt", "Erf", "Range", "CumSum", "RandomNormalLike", "Resize"]
INT8_OPS = ["MatMul", "Gemm", "Gather"]  # Gather: the token embedding, most of a text encoder's bytes


def trace(module, spec: ComponentSpec, example: dict[str, np.ndarray], folder: Path) -> list[Path]:
    """Trace `module` to folder/<name>.onnx at fp32, batch axis dynamic; returns the files written."""
    torch = require("torch", "torch")
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
        written = list(Path(scratch).iterdir())
        if sum(p.stat().st_size for p in written) < PROTOBUF_LIMIT and len(written) == 1:
            shutil.move(str(traced), final)
            return [final]
        # Large model: the exporter scatters weights over many files; gather them into one.
        onnx = require("onnx", "onnx")
        return _save(onnx.load(str(traced), load_external_data=True), final)


def _weight_bytes(model) -> int:
    """Bytes of the model's initializers (ByteSize() overflows past protobuf's 2 GiB limit)."""
    total = 0
    for t in model.graph.initializer:
        total += len(t.raw_data) or 4 * (len(t.float_data) + len(t.int32_data)) + 8 * len(t.int64_data)
    return total


def _save(model, final: Path) -> list[Path]:
    """Save an ONNX model, with one external-data file when it would pass protobuf's limit."""
    onnx = require("onnx", "onnx")
    data = final.with_suffix(".onnx.data")
    if _weight_bytes(model) < PROTOBUF_LIMIT - 256 * 1024**2:
        onnx.save_model(model, str(final))
        return [final]
    onnx.save_model(model, str(final), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)
    return [final, data]


def export(component, folder: Path, precision: str) -> list[Path]:
    """Write <name>.onnx (and its .data file if large) at `precision` into `folder`."""
    if precision not in PRECISIONS:
        raise InputError(f"the onnx target supports precisions {PRECISIONS}, got {precision!r}")
    folder.mkdir(parents=True, exist_ok=True)
    source = component.onnx_fp32()
    final = folder / source.name
    if precision == "fp32":
        files = [source, *([source.with_suffix(".onnx.data")] if source.with_suffix(".onnx.data").exists() else [])]
        for f in files:
            shutil.copy2(f, folder / f.name)
        return [folder / f.name for f in files]
    onnx = require("onnx", "onnx")
    if precision == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = onnx.load(str(source), load_external_data=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = convert_float_to_float16(model, keep_io_types=True, op_block_list=FP16_KEEP_FP32,
                                             disable_shape_infer=_weight_bytes(model) > PROTOBUF_LIMIT // 2)
        return _save(model, final)
    from onnxruntime.quantization import QuantType, quantize_dynamic

    large = source.stat().st_size + _data_size(source) > PROTOBUF_LIMIT
    quantize_dynamic(str(source), str(final), op_types_to_quantize=INT8_OPS, weight_type=QuantType.QInt8,
                     per_channel=False, use_external_data_format=large)
    return [final] + sorted(p for p in folder.glob(f"{final.name}*") if p != final)


def _data_size(path: Path) -> int:
    data = path.with_suffix(".onnx.data")
    return data.stat().st_size if data.exists() else 0
