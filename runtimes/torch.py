"""PyTorch backend: diffusers/transformers modules wrapped to the component contract.

The wrappers here are also what export traces, so every exported artifact is compared against
exactly the module it came from. The generator wrapper folds the scheduler's x0 conversion and
LCM boundary scalings into the graph; the decoder wrapper folds latent scaling and [0, 1] output.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nitro_edge._lazy import require
from nitro_edge.errors import InputError, SourceError
from nitro_edge.schedule import SamplerParams
from nitro_edge.sources import Source, resolve_source
from nitro_edge.specs import COMPONENTS, ComponentSpec, ModelDims, checked, component_specs
from nitro_edge.tokenizer import ClipTokenizer, tokenizer_from_folder

torch = require("torch", "torch")
nn = torch.nn


class TextEncoder(nn.Module):
    """CLIP text tower -> the hidden states the generator is conditioned on (and SDXL's pooled)."""

    def __init__(self, model, penultimate: bool, text_embeds: bool):
        super().__init__()
        self.model, self.penultimate, self.text_embeds = model, penultimate, text_embeds

    def forward(self, input_ids):
        out = self.model(input_ids, output_hidden_states=self.penultimate, return_dict=True)
        hidden = out.hidden_states[-2] if self.penultimate else out.last_hidden_state
        return (hidden, out.text_embeds) if self.text_embeds else (hidden,)


class Generator(nn.Module):
    """UNet plus the LCM x0 step at the (shifted) timestep it is given: returns the denoised latent."""

    def __init__(self, unet, params: SamplerParams, sdxl: bool):
        super().__init__()
        self.unet, self.sdxl = unet, sdxl
        self.v_prediction = params.schedule.prediction_type == "v_prediction"
        alphas = torch.from_numpy(params.schedule.alphas_cumprod())
        t = torch.arange(len(alphas), dtype=torch.int64) * params.timestep_scaling
        self.register_buffer("sqrt_alpha", alphas.sqrt(), persistent=False)
        self.register_buffer("sqrt_beta", (1 - alphas).sqrt(), persistent=False)
        self.register_buffer("c_skip", (0.25 / (t**2 + 0.25)).float(), persistent=False)
        self.register_buffer("c_out", (t / (t**2 + 0.25) ** 0.5).float(), persistent=False)

    def forward(self, sample, timestep, encoder_hidden_states, text_embeds=None, time_ids=None):
        added = {"text_embeds": text_embeds, "time_ids": time_ids} if self.sdxl else None
        model_out = self.unet(
            sample, timestep, encoder_hidden_states, added_cond_kwargs=added, return_dict=False
        )[0]
        return (self.denoise(sample, timestep, model_out),)

    def denoise(self, sample, timestep, model_out):
        """The LCM step to x0 at `timestep`, with the boundary-condition scalings."""
        a = self.sqrt_alpha[timestep].view(-1, 1, 1, 1)
        s = self.sqrt_beta[timestep].view(-1, 1, 1, 1)
        if self.v_prediction:
            x0 = a * sample - s * model_out
        else:
            x0 = (sample - s * model_out) / a
        c_skip = self.c_skip[timestep].view(-1, 1, 1, 1)
        c_out = self.c_out[timestep].view(-1, 1, 1, 1)
        return c_out * x0 + c_skip * sample


class VaeDecoder(nn.Module):
    """VAE decoder from generator latents to an image in [0, 1] (NCHW)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae
        config = vae.config
        self.scaling = float(getattr(config, "scaling_factor", 1.0) or 1.0)
        self.shift = float(getattr(config, "shift_factor", 0.0) or 0.0)

    def forward(self, latents):
        image = self.vae.decode(latents / self.scaling + self.shift, return_dict=False)[0]
        return ((image / 2 + 0.5).clamp(0, 1),)


def as_component(module, spec: ComponentSpec):
    """A torch module as a component: named numpy arrays in, named numpy arrays out."""

    def call(**arrays: np.ndarray) -> dict:
        args = [torch.from_numpy(np.ascontiguousarray(arrays[t.name])) for t in spec.inputs]
        with torch.inference_mode():
            outs = module(*args)
        return {t.name: o.float().numpy() for t, o in zip(spec.outputs, outs)}

    return checked(spec, call)


def _subfolder_class(path: Path, name: str) -> str:
    index = json.loads((path / "model_index.json").read_text())
    return index[name][1]


def load_modules(source: Source, height: int | None = None, width: int | None = None):
    """Load a source's modules: (dims, tokenizers, {component: torch module}), all fp32 eval."""
    names = COMPONENTS[source.architecture]
    modules = {name: load_module(source, name) for name in names}
    text_names = [n for n in names if n.startswith("text_encoder")]
    tokenizers = []
    for name in text_names:
        backend, info = tokenizer_from_folder(source.path / name.replace("text_encoder", "tokenizer"))
        tokenizers.append(ClipTokenizer(backend, info))
    unet_config = modules["generator"].unet.config
    vae_scale = 2 ** (len(json.loads((source.path / "vae" / "config.json").read_text())["block_out_channels"]) - 1)
    multiple = vae_scale * 2 ** (len(unet_config.down_block_types) - 1)
    default = int(unet_config.sample_size) * vae_scale
    height, width = height or default, width or default
    for label, value in (("height", height), ("width", width)):
        if value % multiple or value <= 0:
            raise InputError(f"{label} must be a positive multiple of {multiple} for this model, got {value}")
    text = [modules[n].model.config for n in text_names]
    dims = ModelDims(
        architecture=source.architecture,
        height=height,
        width=width,
        text_hidden=tuple(int(c.hidden_size) for c in text),
        pooled_dim=int(text[-1].projection_dim) if source.architecture == "sdxl" else 0,
        latent_channels=int(unet_config.in_channels),
        vae_scale_factor=vae_scale,
        max_length=tokenizers[0].info.max_length,
    )
    return dims, tokenizers, modules


def load_module(source: Source, name: str):
    """One component's torch module (fp32, eval, no grad), loaded on its own from the source folder.
    Export loads one at a time so that only the component being converted is in memory."""
    diffusers = require("diffusers", "torch")
    transformers = require("transformers", "torch")
    path = source.path
    sdxl = source.architecture == "sdxl"
    if name.startswith("text_encoder"):
        cls = getattr(transformers, _subfolder_class(path, name))
        model = cls.from_pretrained(path / name, dtype=torch.float32)
        module = TextEncoder(model, penultimate=sdxl, text_embeds=sdxl and name == "text_encoder_2")
    elif name == "generator":
        module = Generator(load_unet(diffusers, source), source.params, sdxl)
    elif name == "vae_decoder":
        if source.tiny_vae is not None:
            vae = diffusers.AutoencoderTiny.from_pretrained(source.tiny_vae, torch_dtype=torch.float32)
        else:
            vae = diffusers.AutoencoderKL.from_pretrained(path / "vae", torch_dtype=torch.float32)
        module = VaeDecoder(vae)
    else:
        raise InputError(f"component must be one of {COMPONENTS[source.architecture]}, got {name!r}")
    return module.eval().requires_grad_(False)


def load_unet(diffusers, source: Source):
    """The source's UNet in fp32: its own, or the --unet safetensors file on the base folder's config."""
    if source.unet_file is None:
        return diffusers.UNet2DConditionModel.from_pretrained(source.path / "unet", torch_dtype=torch.float32)
    safetensors_torch = require("safetensors.torch", "torch")
    config_path = source.path / "unet" / "config.json"
    if not config_path.is_file():
        raise SourceError(f"--unet needs the base folder's unet/config.json for the architecture, not found: {config_path}")
    unet = diffusers.UNet2DConditionModel.from_config(json.loads(config_path.read_text()))
    try:
        state = safetensors_torch.load_file(str(source.unet_file))
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise SourceError(f"cannot read UNet file {source.unet_file}: {exc}") from exc
    missing, unexpected = unet.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SourceError(
            f"UNet file {source.unet_file} does not fit {config_path}: "
            f"{len(missing)} missing keys (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )
    return unet.float()


def load_source(source: Source, height: int | None = None, width: int | None = None):
    """(dims, tokenizers, {component: callable}) for a source folder on the torch backend."""
    dims, tokenizers, modules = load_modules(source, height, width)
    specs = component_specs(dims)
    return dims, tokenizers, {n: as_component(modules[n], specs[n]) for n in COMPONENTS[dims.architecture]}


def load(bundle, precision: str = "fp32", **options) -> dict:
    """Torch components for a bundle, rebuilt from the source its manifest records."""
    if options:
        raise InputError(f"the torch backend takes no options here, got {sorted(options)}")
    prov = bundle.manifest.get("provenance", {})
    src = prov.get("source", {})
    if not src.get("path") or not Path(src["path"]).is_dir():
        raise SourceError(
            f"the torch backend needs the bundle's source folder, which is not here: {src.get('path')!r}"
        )
    source = resolve_source(src["path"], unet=src.get("unet_file"), shift=bundle.params.shift,
                            tiny_vae=src.get("tiny_vae"))
    _, _, comps = load_source(source, bundle.dims.height, bundle.dims.width)
    return comps
