"""ONNX target: fp32 (traced by torch.onnx's TorchScript exporter), fp16 and int8.

- fp16: onnxruntime's float16 converter with fp32 inputs/outputs kept (keep_io_types); ops
  that overflow in fp16 (LayerNorm/GroupNorm statistics, Softmax, Pow, Exp) stay fp32.
- int8: dynamic quantisation (weights int8, activations quantised at run time per tensor) of the
  token embedding (Gather) and MatMul/Gemm (attention, projections). Dynamic rather than static QDQ: it
  needs no calibration set per model and ONNX Runtime's CPU kernels for it are mature; convolutions
  stay fp32 (ConvInteger is slow or missing on several execution providers).
Models over 2 GB keep their weights in one external-data file beside the graph.

Options (recorded on every artifact):
- optimize: ONNX Runtime's transformer optimiser fuses the fp32 graph before the precision step
  (attention into MultiHeadAttention/Attention, LayerNorm+Add into SkipLayerNormalization, Gelu),
  with the fusions ONNX Runtime's CPU provider can run; packed QKV, NHWC convolutions, BiasSplitGelu
  and GroupNorm fusion are CUDA kernels and stay off (GroupNorm: see docs/export.md).
- ort_format: also write <name>.ort (ONNX Runtime's flatbuffer format, what ONNX Runtime Mobile
  loads), optimised at the portable "basic" level; parity-checked like the .onnx file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nitro_edge import registry
from nitro_edge._lazy import require
from nitro_edge.errors import InputError
from nitro_edge.export.component import Variant
from nitro_edge.specs import BATCH, ComponentSpec

OPSET = 17
PRECISIONS = registry.target("onnx").precisions
PROTOBUF_LIMIT = 2 * 1024**3 - 64 * 1024**2  # leave headroom under protobuf's 2 GiB
ALIGNMENT = 4096
FP16_KEEP_FP32 = [
    "LayerNormalization",
    "GroupNormalization",
    "InstanceNormalization",
    "Softmax",
    "Pow",
    "Exp",
    "ReduceMean",
    "Sqrt",
    "Erf",
    "Range",
    "CumSum",
    "RandomNormalLike",
    "Resize",
]
INT8_OPS = ["MatMul", "Gemm", "Gather"]  # Gather: the token embedding, most of a text encoder's bytes
FUSION_MODEL_TYPES = {"text_encoder": "clip", "text_encoder_2": "clip", "generator": "unet", "vae_decoder": "vae"}
FUSED_KEEP_FP32 = ["MultiHeadAttention", "Attention", "SkipLayerNormalization", "Gelu"]  # CPU kernels are fp32


@dataclass(frozen=True)
class Options:
    optimize: bool = False
    ort_format: bool = False

    def __post_init__(self) -> None:
        for name in ("optimize", "ort_format"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"onnx {name} must be true or false, got {getattr(self, name)!r}")

    def facts(self, component: str) -> dict:
        return {"graph_optimized": self.optimize}

    def gate_variants(self, precision: str) -> dict[str, Variant]:
        """Other ways a runtime opens these artifacts, each held to the same parity floor."""
        return {"ort_format": Variant({"ort_format": True})} if self.ort_format else {}


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
        if len(list(Path(scratch).iterdir())) == 1:
            shutil.move(str(traced), final)
            return [final]
        # Large model: the exporter scatters weights over one file per tensor; gather them into one.
        return gather_external_data(traced, final)


def gather_external_data(model_path: Path, final: Path) -> list[Path]:
    """Rewrite a model whose weights lie in many external files as `final` plus one
    `final.onnx.data`, copying one tensor at a time (a large model is never whole in memory)."""
    onnx = require("onnx", "onnx")
    model = onnx.load(str(model_path), load_external_data=False)
    data = final.with_suffix(".onnx.data")
    offset = 0
    with open(data, "wb") as out:
        for tensor in onnx.external_data_helper._get_all_tensors(model):
            if tensor.data_location != onnx.TensorProto.EXTERNAL:
                continue
            info = {e.key: e.value for e in tensor.external_data}
            with open(model_path.parent / info["location"], "rb") as f:
                f.seek(int(info.get("offset", 0)))
                blob = f.read(int(info["length"]) if "length" in info else -1)
            pad = -offset % ALIGNMENT  # page-aligned, so ONNX Runtime can map each tensor
            out.write(b"\0" * pad)
            offset += pad
            out.write(blob)
            del tensor.external_data[:]
            for key, value in (("location", data.name), ("offset", str(offset)), ("length", str(len(blob)))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            offset += len(blob)
    onnx.save_model(model, str(final))
    return [final, data]


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
    onnx.save_model(
        model,
        str(final),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data.name,
        size_threshold=1024,
    )
    return [final, data]


def export(component, folder: Path, precision: str, options: Options = Options()) -> list[Path]:
    """Write <name>.onnx (and its .data file if large, and <name>.ort if asked) at `precision`."""
    if precision not in PRECISIONS:
        raise InputError(f"the onnx target supports precisions {PRECISIONS}, got {precision!r}")
    folder.mkdir(parents=True, exist_ok=True)
    source = component.onnx_fp32()
    if options.optimize:
        source = _fused(source, component.name, source.parent.parent / "onnx-fused")
    files = _at_precision(source, folder / f"{component.name}.onnx", precision, options.optimize)
    if options.ort_format:
        files.append(_ort_format(files[0]))
    return files


def _at_precision(source: Path, final: Path, precision: str, fused: bool) -> list[Path]:
    if precision == "fp32":
        files = [source, *([source.with_suffix(".onnx.data")] if source.with_suffix(".onnx.data").exists() else [])]
        for f in files:
            _link_or_copy(f, final.parent / f.name)
        return [final.parent / f.name for f in files]
    onnx = require("onnx", "onnx")
    if precision == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = onnx.load(str(source), load_external_data=False)
        if not fused:
            # Types for every tensor, so that the ops kept fp32 get their casts: inferred on the graph
            # without its weights (onnx's in-memory inference refuses models over 2 GB).
            model = onnx.shape_inference.infer_shapes(model)
        onnx.load_external_data_for_model(model, str(source.parent))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if fused:  # onnx's shape inference does not know the fused (com.microsoft) ops; ORT's does
                from onnxruntime.transformers.onnx_model import OnnxModel

                wrapped = OnnxModel(model)
                wrapped.convert_float_to_float16(
                    use_symbolic_shape_infer=True, keep_io_types=True, op_block_list=FP16_KEEP_FP32 + FUSED_KEEP_FP32
                )
                model = wrapped.model
            else:
                model = convert_float_to_float16(
                    model, keep_io_types=True, op_block_list=FP16_KEEP_FP32, disable_shape_infer=True
                )
        return _save(model, final)
    from onnxruntime.quantization import QuantType, quantize_dynamic

    large = model_bytes(source) > PROTOBUF_LIMIT
    # Fused (com.microsoft) ops have no types in onnx's shape inference; their tensors are float.
    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT} if fused else {}
    quantize_dynamic(
        str(source),
        str(final),
        op_types_to_quantize=INT8_OPS,
        weight_type=QuantType.QInt8,
        per_channel=False,
        use_external_data_format=large,
        extra_options=extra,
    )
    return [final] + sorted(p for p in final.parent.glob(f"{final.name}*") if p != final)


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link where the file system allows it (a full-size trace is gigabytes), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _fused(source: Path, name: str, folder: Path) -> Path:
    """The fp32 graph after ONNX Runtime's transformer fusions for CPU (made once per component)."""
    final = folder / source.name
    if final.exists():
        return final
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    fusion = FusionOptions(FUSION_MODEL_TYPES[name])
    for cuda_only in (
        "enable_packed_qkv",
        "enable_packed_kv",
        "enable_nhwc_conv",
        "enable_bias_splitgelu",
        "enable_group_norm",
        "enable_skip_group_norm",
        "enable_bias_add",
    ):
        setattr(fusion, cuda_only, False)
    folder.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = optimize_model(
            str(source), model_type=FUSION_MODEL_TYPES[name], optimization_options=fusion, opt_level=0, use_gpu=False
        )
    model.topological_sort()
    if not any(o.domain == "com.microsoft" for o in model.model.opset_import):  # the fused ops' domain
        model.model.opset_import.append(require("onnx", "onnx").helper.make_opsetid("com.microsoft", 1))
    _save(model.model, final)
    return final


def _ort_format(model_path: Path) -> Path:
    """<name>.ort beside `model_path`: the graph in ONNX Runtime's own format, basic optimisations."""
    if model_bytes(model_path) > PROTOBUF_LIMIT:
        raise InputError(
            f"{model_path.name} is over 2 GB; the ORT format (flatbuffers) cannot hold it. "
            "Drop --ort-format for this model (ONNX Runtime Mobile is for models under 2 GB)"
        )
    ort = require("onnxruntime", "onnx")
    out = model_path.with_suffix(".ort")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(out)
    options.add_session_config_entry("session.save_model_format", "ORT")
    options.log_severity_level = 3
    ort.InferenceSession(str(model_path), sess_options=options, providers=["CPUExecutionProvider"])
    return out


def model_bytes(path: Path) -> int:
    """The size of the ONNX model at `path` with its external data file, if it has one."""
    data = path.with_suffix(".onnx.data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)
