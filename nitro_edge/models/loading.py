"""A source's modules in fp32: the whole pipeline (for a reference run or the torch backend), or
one component at a time (export converts one while the others stay on disk)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from nitro_edge._lazy import require
from nitro_edge.errors import InputError, SourceError
from nitro_edge.models import lora
from nitro_edge.models.wrappers import Generator, TextEncoder, VaeDecoder, as_component
from nitro_edge.sources import Source
from nitro_edge.specs import COMPONENTS, ModelDims, component_specs
from nitro_edge.tokenizer import ClipTokenizer, tokenizer_from_folder

torch = require("torch", "torch")
log = logging.getLogger(__name__)


def size_multiple(unet_config, vae_scale: int) -> int:
    """Height and width must be multiples of this: the VAE's downscale times the UNet's (64 for SD models)."""
    return vae_scale * 2 ** (len(unet_config.down_block_types) - 1)


def vae_scale_factor(source: Source) -> int:
    config = json.loads((source.path / "vae" / "config.json").read_text())
    return 2 ** (len(config["block_out_channels"]) - 1)


def load_modules(source: Source, height: int | None = None, width: int | None = None):
    """Load a source's modules: (dims, tokenizers, {component: torch module}), all fp32 eval."""
    names = COMPONENTS[source.architecture]
    modules = {name: load_module(source, name) for name in names}
    text_names = [n for n in names if n.startswith("text_encoder")]
    tokenizers = []
    for name in text_names:
        positions = int(modules[name].model.config.max_position_embeddings)
        backend, info = tokenizer_from_folder(source.path / name.replace("text_encoder", "tokenizer"), positions)
        tokenizers.append(ClipTokenizer(backend, info))
    unet_config = modules["generator"].unet.config
    vae_scale = vae_scale_factor(source)
    multiple = size_multiple(unet_config, vae_scale)
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


def load_components(source: Source, height: int | None = None, width: int | None = None):
    """(dims, tokenizers, {component: callable}) for a source folder: the modules as components."""
    dims, tokenizers, modules = load_modules(source, height, width)
    specs = component_specs(dims)
    return dims, tokenizers, {n: as_component(modules[n], specs[n]) for n in COMPONENTS[dims.architecture]}


def _subfolder_class(path: Path, name: str) -> str:
    index = json.loads((path / "model_index.json").read_text())
    return index[name][1]


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
        module = Generator(load_unet(source), source.params, sdxl)
    elif name == "vae_decoder":
        if source.tiny_vae is not None:
            vae = diffusers.AutoencoderTiny.from_pretrained(source.tiny_vae, torch_dtype=torch.float32)
        else:
            vae = diffusers.AutoencoderKL.from_pretrained(path / "vae", torch_dtype=torch.float32)
        module = VaeDecoder(vae)
    else:
        raise InputError(f"component must be one of {COMPONENTS[source.architecture]}, got {name!r}")
    lora.apply(source.loras, source.architecture, name, module)
    return module.eval().requires_grad_(False)


def load_unet(source: Source):
    """The source's UNet in fp32: its own, or the --unet safetensors file on the base folder's config."""
    diffusers = require("diffusers", "torch")
    if source.unet_file is None:
        return diffusers.UNet2DConditionModel.from_pretrained(source.path / "unet", torch_dtype=torch.float32)
    safetensors_torch = require("safetensors.torch", "torch")
    config_path = source.path / "unet" / "config.json"
    if not config_path.is_file():
        raise SourceError(
            f"--unet needs the base folder's unet/config.json for the architecture, not found: {config_path}"
        )
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
