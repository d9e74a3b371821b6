"""OpenVINO target: IR (.xml + .bin) converted from the fp32 ONNX trace, with static shapes at
batch 1 and the bundle's resolution (so it also compiles for NPUs).

- fp32: weights kept fp32.          - fp16: weights stored fp16 (OpenVINO's compress_to_fp16).
- int8: NNCF weight compression (INT8_ASYM, per-channel), activations stay float.
- int8-hybrid: generator weights and activations quantised with NNCF on calibration inputs
  recorded from real sampling runs (model type TRANSFORMER keeps the sensitive ops float, SmoothQuant
  off); the other components get int8 weight compression, as for int8.
- int8-act: as int8-hybrid, and the VAE decoder's weights and activations too, calibrated on the
  latents the generator produced in those runs (the decoder is most of a full-VAE run's time). Only
  the inputs of the decoder's convolutions that read an activation are quantised (asymmetric, most
  read SiLU outputs; ranges are the calibration's min/max, as the gate's prompts are not the
  calibration's); the residual stream, normalisation, attention and the convolutions that read the
  residual stream, sit at latent resolution or write the image stay float (FLOAT_OPERATIONS,
  FLOAT_CONVOLUTIONS: why, and what the choices measured).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from nitro_edge import registry
from nitro_edge._lazy import require
from nitro_edge.errors import InputError
from nitro_edge.export.component import Variant
from nitro_edge.export.onnx import model_bytes

log = logging.getLogger(__name__)
PRECISIONS = registry.target("openvino").precisions
# The components whose activations are quantised too (the others get int8 weights only).
ACTIVATIONS = {"int8-hybrid": ("generator",), "int8-act": ("generator", "vae_decoder")}
# What stays float in the decoder under int8-act. Quantised: the inputs of the convolutions that read an
# activation (SiLU), which is where its int8 kernels run. Float: what NNCF would quantise besides, for no
# kernel (the residual stream at every Add's output, the normalisation, the attention block); the
# convolutions that read the residual stream, whose range its outliers set (the 1x1 shortcuts and the
# upsampling convolutions, which export folds to 2.25x fewer multiply-adds: models/upsampling.py); the
# two at latent resolution (negligible compute; the 4-channel latent is where int8 costs most) and the
# output convolution (its error lands in the pixels). Full-size SD1.5 decoder at 512², 2 AMD EPYC Zen 4
# cores: 52.9 dB image PSNR against torch in 3.68 s, where NNCF's own placement gave 38.4 dB in 3.81 s
# and bf16 55.5 dB in 5.97 s folded, 6.41 s not (`python benchmarks/decoder_int8.py`; docs/benchmarks.md,
# "The int8 decoder").
FLOAT_OPERATIONS = ("Add", "MVN", "MatMul", "Multiply", "ScaledDotProductAttention")
LATENT_CONVOLUTIONS = (".*post_quant_conv.*", ".*conv_in.*")
RESIDUAL_CONVOLUTIONS = (".*conv_shortcut.*", ".*upsamplers.*")
FLOAT_CONVOLUTIONS = (*LATENT_CONVOLUTIONS, *RESIDUAL_CONVOLUTIONS)


@dataclass(frozen=True)
class Options:
    """None at export: the compile cache, device and precision hint are runtime options."""

    def facts(self, component: str) -> dict:
        return {}

    def gate_variants(self, precision: str) -> dict[str, Variant]:
        """fp32 and fp16 bundles are also held at the CPU's default compute precision (bf16 where the
        CPU has bf16 units), at the fp16 floors: passing, the runtime computes in it by default."""
        if precision.startswith("int8"):
            return {}  # int8 bundles are gated at the device's default already
        compute = device_default_precision()
        return {
            "device_default": Variant(
                {"inference_precision": None}, floor="fp16", facts={"inference_precision": compute}, required=False
            )
        }


def device_default_precision(device: str = "CPU") -> str:
    """What the OpenVINO plugin computes floating-point layers in unless told: bf16, f16 or f32."""
    ov = require("openvino", "openvino")
    return ov.Core().get_property(device, "INFERENCE_PRECISION_HINT").get_type_name()


def _quantize_options(nncf, name: str, model) -> dict:
    """NNCF settings per component for weights-and-activations int8 (see the module docstring)."""
    if name == "generator":
        # SmoothQuant (NNCF's default for transformers) off: with it SDXL's generator does not
        # quantise in 24 GiB; on full-size SD1.5 it gained 0.5 dB end to end and no speed, for 1.8 GiB
        # more at export (docs/benchmarks.md, "SmoothQuant").
        off = nncf.AdvancedSmoothQuantParameters(convolution=-1, matmul=-1)
        return {
            "model_type": nncf.ModelType.TRANSFORMER,
            "advanced_parameters": nncf.AdvancedQuantizationParameters(smooth_quant_alphas=off),
        }
    return decoder_quantize_options(nncf, model)


def decoder_quantize_options(
    nncf,
    model,
    float_operations: tuple[str, ...] = FLOAT_OPERATIONS,
    float_convolutions: tuple[str, ...] = FLOAT_CONVOLUTIONS,
    float_output: bool = True,
) -> dict:
    """NNCF settings for the VAE decoder under int8-act (see FLOAT_OPERATIONS). The keywords keep other
    operation types, convolutions (name patterns) or the output convolution float instead:
    benchmarks/decoder_int8.py measures what each choice buys."""
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    return {
        "preset": nncf.QuantizationPreset.MIXED,
        "advanced_parameters": nncf.AdvancedQuantizationParameters(
            activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX
        ),
        "ignored_scope": nncf.IgnoredScope(
            names=[output_convolution(model)] if float_output else [],
            patterns=list(float_convolutions),
            types=list(float_operations),
            validate=False,
        ),
    }


def output_convolution(model) -> str:
    """The name of the decoder's last convolution, the one that writes the image (OpenVINO renames it
    when it folds the image's scaling into it, so it is found by position, not by name)."""
    convolutions = [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() == "Convolution"]
    if not convolutions:
        raise InputError("the VAE decoder has no convolution to quantise")
    return convolutions[-1]


# The export process's peak RSS while NNCF quantises a generator's activations (SmoothQuant off, 512²,
# Linux): 10.0 GiB for the full-size SD1.5 generator (3.2 GiB in fp32), 22.3 and 23.1 GiB in two
# exports of SDXL's (9.6 GiB); the line through 10.0 and the higher 23.1 (docs/export.md, "Memory").
GIB = 1024**3
QUANTIZE_BASE, QUANTIZE_PER_FP32_BYTE = 3.4 * GIB, 2.06


def quantize_memory_warning(onnx: Path, available: int | None = None) -> str | None:
    """A warning when quantising the fp32 model `onnx` (with its external data) will probably not fit
    in `available` bytes (by default what the system has free plus what this process holds)."""
    size = model_bytes(onnx)
    need = QUANTIZE_BASE + QUANTIZE_PER_FP32_BYTE * size
    if available is None:
        import psutil  # NNCF depends on it

        available = psutil.virtual_memory().available + psutil.Process().memory_info().rss
    if need <= available:
        return None
    return (
        f"quantising the activations of a {size / GIB:.1f} GiB fp32 model takes about {need / GIB:.1f} GiB "
        f"at 512² (measured; presumably more for larger images), and {available / GIB:.1f} GiB is available: "
        "the export may be killed for lack of memory. Precision int8 (weights only) needs much less."
    )


def static_shapes(spec) -> dict:
    return {t.name: [1 if d == "batch" else d for d in t.shape] for t in spec.inputs}


def export(component, folder: Path, precision: str, options: Options = Options()) -> list[Path]:
    """Write <name>.xml and <name>.bin at `precision` into `folder`."""
    if precision not in PRECISIONS:
        raise InputError(f"the openvino target supports precisions {PRECISIONS}, got {precision!r}")
    ov = require("openvino", "openvino")
    folder.mkdir(parents=True, exist_ok=True)
    model = ov.convert_model(str(component.onnx_fp32()))
    model.reshape(static_shapes(component.spec))
    if precision.startswith("int8"):
        nncf = require("nncf", "openvino")
        if component.name in ACTIVATIONS.get(precision, ()) and component.calibration:
            warning = quantize_memory_warning(component.onnx_fp32())
            if warning:
                log.warning("%s: %s", component.name, warning)
            model = nncf.quantize(
                model,
                nncf.Dataset(component.calibration),
                subset_size=len(component.calibration),
                **_quantize_options(nncf, component.name, model),
            )
        else:
            model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    xml = folder / f"{component.name}.xml"
    ov.save_model(model, str(xml), compress_to_fp16=precision == "fp16")
    return [xml, xml.with_suffix(".bin")]
