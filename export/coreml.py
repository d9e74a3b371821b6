"""Core ML target: ML Program (.mlpackage) converted by coremltools from the torch module.

- fp32 / fp16: compute precision of the program.   - int8: linear symmetric int8 weights (fp16 program).
- pal4 / pal6 / pal8: k-means palettisation of weights to 4, 6 or 8 bits (fp16 program).
Integer inputs (input_ids, timestep) are int32 in Core ML; the runtime casts. Prediction needs
macOS; conversion and saving work anywhere.

Options (recorded on every artifact): the minimum deployment target (default macOS14, the same ML
Program opset as iOS17); the compute units the app should request; the generator's attention
(`original`, or `split_einsum`: one small attention per head, no head transposes, the form the
Neural Engine runs well); and the generator in one package or two chunks (for iPhone memory limits).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nitro_edge import registry
from nitro_edge._lazy import require
from nitro_edge.errors import InputError, ParityError

PRECISIONS = registry.target("coreml").precisions
DEPLOYMENT_TARGETS = registry.target("coreml").options["deployment_target"]
COMPUTE_UNITS = registry.target("coreml").options["compute_units"]
ATTENTION = registry.target("coreml").options["attention"]
PAIRED = {"macOS13": "iOS16", "macOS14": "iOS17", "macOS15": "iOS18"}
REWRITE_TOLERANCE = 1e-4  # fp32 torch, same weights: only summation order differs


@dataclass(frozen=True)
class Options:
    deployment_target: str = "macOS14"
    compute_units: str = "ALL"
    attention: str = "original"
    chunks: int = 1

    def __post_init__(self) -> None:
        for field, value, allowed in (
            ("deployment_target", self.deployment_target, DEPLOYMENT_TARGETS),
            ("compute_units", self.compute_units, COMPUTE_UNITS),
            ("attention", self.attention, ATTENTION),
            ("chunks", self.chunks, (1, 2)),
        ):
            if value not in allowed:
                raise InputError(f"coreml {field} must be one of {allowed}, got {value!r}")

    def facts(self, component: str) -> dict:
        """What the manifest records on each artifact."""
        pair = PAIRED.get(self.deployment_target) or next(k for k, v in PAIRED.items() if v == self.deployment_target)
        facts = {"compute_units": self.compute_units, "minimum_deployment_target": f"{self.deployment_target} / {pair}"}
        if component == "generator":
            facts["attention"] = self.attention
        return facts

    def gate_variants(self, precision: str) -> dict:
        """Other ways a runtime opens these artifacts (none for this target)."""
        return {}


def export(component, folder: Path, precision: str, options: Options = Options()) -> list[Path]:
    """Write <name>.mlpackage (a folder) at `precision` into `folder`; returns its files. With
    options.chunks == 2 the generator is written as <name>_chunk1 and <name>_chunk2 packages."""
    if precision not in PRECISIONS:
        raise InputError(f"the coreml target supports precisions {PRECISIONS}, got {precision!r}")
    ct = require("coremltools", "coreml")
    torch = require("torch", "torch")
    folder.mkdir(parents=True, exist_ok=True)
    chatter = logging.getLogger("coremltools")
    level = chatter.level
    chatter.setLevel(logging.ERROR)  # it logs every op it removes
    is_generator = component.name == "generator"
    rewritten = is_generator and (options.chunks == 2 or options.attention != "original")
    parts = [(component.module, component.spec, component.example)]
    reference = _run(torch, parts, component.example)["denoised"] if rewritten else None
    try:
        with _attention(component.module if is_generator else None, options.attention):
            if is_generator and options.chunks == 2:
                from nitro_edge.export.chunks import split_generator

                head, head_spec, head_example, tail, tail_spec, tail_example = split_generator(
                    component.module, component.spec, component.example
                )
                parts = [(head, head_spec, head_example), (tail, tail_spec, tail_example)]
            if rewritten:  # what converts must still be the generator, before Core ML sees it
                _check_rewrite(reference, _run(torch, parts, component.example)["denoised"], options)
            written = []
            for module, spec, example in parts:
                path = folder / f"{spec.name}.mlpackage"
                shutil.rmtree(path, ignore_errors=True)
                _convert(ct, torch, module, spec, example, precision, options).save(str(path))
                written += sorted(p for p in path.rglob("*") if p.is_file())
    finally:
        chatter.setLevel(level)
    return written


def _run(torch, parts, example: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run modules in order in torch, each on the inputs and earlier outputs it names."""
    feed = dict(example)
    with torch.inference_mode():
        for module, spec, _ in parts:
            outs = module(*(torch.from_numpy(feed[t.name]) for t in spec.inputs))
            feed.update({t.name: o.numpy() for t, o in zip(spec.outputs, outs)})
    return feed


def _check_rewrite(reference: np.ndarray, got: np.ndarray, options: Options) -> None:
    error = float(np.abs(got - reference).max())
    if error > REWRITE_TOLERANCE * max(1.0, float(np.abs(reference).max())):
        raise ParityError(
            f"the generator rewritten for Core ML (attention {options.attention}, "
            f"{options.chunks} chunk(s)) differs from it in torch by {error:.2e} (max abs), "
            f"over {REWRITE_TOLERANCE:.0e}"
        )


def _convert(ct, torch, module, spec, example, precision: str, options: Options):
    args = tuple(torch.from_numpy(example[t.name]) for t in spec.inputs)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module.eval(), args, check_trace=False)
        inputs = [
            ct.TensorType(
                name=t.name, shape=example[t.name].shape, dtype=np.int32 if t.dtype == "int64" else np.float32
            )
            for t in spec.inputs
        ]
        outputs = [ct.TensorType(name=t.name, dtype=np.float32) for t in spec.outputs]
        model = ct.convert(
            traced,
            inputs=inputs,
            outputs=outputs,
            convert_to="mlprogram",
            compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16,
            minimum_deployment_target=getattr(ct.target, options.deployment_target),
            compute_units=getattr(ct.ComputeUnit, options.compute_units),
            skip_model_load=True,
        )
        opt = ct.optimize.coreml
        # Constants that are not weights (CLIP's causal mask holds -inf) must stay as they are.
        skip = {
            name: None
            for name, meta in opt.get_weights_metadata(model, weight_threshold=16).items()
            if not np.isfinite(meta.val).all()
        }
        if precision == "int8":
            config = opt.OptimizationConfig(
                global_config=opt.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8"), op_name_configs=skip
            )
            model = opt.linear_quantize_weights(model, config)
        elif precision.startswith("pal"):
            config = opt.OptimizationConfig(
                global_config=opt.OpPalettizerConfig(mode="kmeans", nbits=int(precision[3:])), op_name_configs=skip
            )
            model = opt.palettize_weights(model, config)
    return model


@contextlib.contextmanager
def _attention(generator, variant: str):
    """Give the generator's UNet `variant` attention while it converts, then restore its own."""
    if generator is None or variant == "original":
        yield
        return
    unet = generator.unet
    before = unet.attn_processors
    unet.set_attn_processor(SplitEinsumAttention())
    try:
        yield
    finally:
        unet.set_attn_processor(before)


class SplitEinsumAttention:
    """diffusers attention processor computing each head on its own: two einsums and a softmax
    over (batch, query, key) per head, on channel slices, so no (batch, heads, ...) tensor and no
    transpose is formed. The same mathematics as the default processor (tests hold them within 1e-5);
    Apple's Neural Engine guidance splits attention per head for the same reason. Unlike Apple's
    rewrite, tensors keep diffusers' (batch, sequence, channels) layout."""

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs
    ):
        torch = require("torch", "torch")
        plain = (
            attention_mask is None
            and hidden_states.ndim == 3
            and attn.spatial_norm is None
            and attn.group_norm is None
            and not attn.residual_connection
            and not attn.norm_cross
            and attn.norm_q is None
            and attn.norm_k is None
        )
        if not plain:
            raise InputError(
                "split_einsum attention supports the UNet's transformer attention only "
                "(no mask, no group/spatial/q/k norm, 3-D input)"
            )
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q, k, v = attn.to_q(hidden_states) * attn.scale, attn.to_k(context), attn.to_v(context)
        width = q.shape[-1] // attn.heads
        heads = []
        for h in range(attn.heads):
            part = slice(h * width, (h + 1) * width)
            weights = torch.einsum("bqc,bkc->bqk", q[..., part], k[..., part]).softmax(dim=-1)
            heads.append(torch.einsum("bqk,bkc->bqc", weights, v[..., part]))
        out = attn.to_out[1](attn.to_out[0](torch.cat(heads, dim=-1)))
        return out / attn.rescale_output_factor
