"""LoRA files merged into the text encoder(s) and the generator before export (or in the torch backend).

Formats: diffusers/PEFT safetensors (`unet.….lora_A.weight`, `text_encoder.…`) and kohya-style
(`lora_unet_…`, `lora_te_…`, `lora_te1_…`/`lora_te2_…` for SDXL, with `.alpha`), both read by
diffusers' own loader (`lora_state_dict`, which converts kohya names), then loaded into each module
with PEFT and fused at the given scale, exactly as `pipe.load_lora_weights(); pipe.fuse_lora()`.
A key that names no module of the model is refused with its name, never skipped.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from nitro_edge._lazy import require
from nitro_edge.errors import SourceError

# Which state-dict prefix loads into which component, per architecture.
PREFIXES = {
    "sd15": {"text_encoder": "text_encoder", "unet": "generator"},
    "sd21": {"text_encoder": "text_encoder", "unet": "generator"},
    "sdxl": {"text_encoder": "text_encoder", "text_encoder_2": "text_encoder_2", "unet": "generator"},
}
_SUFFIX = re.compile(
    r"\.(lora_[AB]|lora\.(down|up)|lora_(down|up)|lora_magnitude_vector)(\.[a-z_]+)?\.weight$|\.alpha$"
)


@dataclass(frozen=True)
class Lora:
    """One LoRA file at a scale; what the bundle records of it."""

    path: Path
    scale: float = 1.0

    @classmethod
    def parse(cls, spec: str) -> Lora:
        """FILE or FILE:SCALE (the CLI's --lora)."""
        path, _, scale = spec.rpartition(":") if re.search(r":-?[0-9.]+$", spec) else (spec, "", "")
        try:
            value = float(scale) if scale else 1.0
        except ValueError:
            raise SourceError(f"--lora takes FILE[:SCALE] with SCALE a number, got {spec!r}") from None
        lora = cls(Path(path), value)
        if not lora.path.is_file() or lora.path.suffix != ".safetensors":
            raise SourceError(f"--lora must be an existing .safetensors LoRA file, got {lora.path}")
        return lora

    @functools.cached_property
    def sha256(self) -> str:
        digest = hashlib.sha256()
        with open(self.path, "rb") as f:
            while block := f.read(1 << 22):
                digest.update(block)
        return digest.hexdigest()

    def describe(self) -> dict:
        return {"file": self.path.name, "path": str(self.path), "sha256": self.sha256, "scale": self.scale}

    @classmethod
    def recorded(cls, entry: dict) -> Lora:
        """The LoRA a manifest records, found again at its path and checked against its sha256."""
        lora = cls(Path(entry["path"]), float(entry["scale"]))
        if not lora.path.is_file() or lora.sha256 != entry["sha256"]:
            raise SourceError(
                f"the bundle was exported with LoRA {entry['file']}, which is not at {lora.path} (or has changed since)"
            )
        return lora


def read(lora: Lora, architecture: str) -> tuple[dict, dict | None]:
    """(state dict in diffusers' naming, network alphas), checked to belong to `architecture`."""
    diffusers = require("diffusers", "torch")
    require("peft", "torch")
    cls = diffusers.StableDiffusionXLPipeline if architecture == "sdxl" else diffusers.StableDiffusionPipeline
    try:
        state, alphas = cls.lora_state_dict(str(lora.path))
    except (ValueError, KeyError, RuntimeError, OSError) as exc:  # diffusers' conversion refuses keys it cannot map
        raise SourceError(
            f"LoRA {lora.path.name} is not a diffusers/PEFT or kohya-style LoRA of an SD model: "
            f"{str(exc).splitlines()[0][:300]}"
        ) from exc
    prefixes = {key.split(".", 1)[0] for key in state}
    foreign = sorted(prefixes - set(PREFIXES[architecture]))
    if "text_encoder_2" in foreign:
        raise SourceError(
            f"LoRA {lora.path.name} is for SDXL (it has text_encoder_2 weights); this model is {architecture}"
        )
    if foreign:
        raise SourceError(
            f"LoRA {lora.path.name} has weights for {foreign}, which a {architecture} model does not have"
        )
    if not state:
        raise SourceError(f"LoRA {lora.path.name} holds no LoRA weights")
    return state, alphas


def apply(loras: tuple[Lora, ...], architecture: str, component: str, module) -> None:
    """Merge every LoRA's weights for `component` into `module` (a TextEncoder or Generator wrapper)."""
    if not loras or component == "vae_decoder":
        return
    diffusers = require("diffusers", "torch")
    from diffusers.loaders.lora_base import fuse_text_encoder_lora
    from diffusers.utils.peft_utils import recurse_remove_peft_layers

    cls = diffusers.StableDiffusionXLPipeline if architecture == "sdxl" else diffusers.StableDiffusionPipeline
    prefix = next(p for p, c in PREFIXES[architecture].items() if c == component)
    target = module.unet if component == "generator" else module.model
    for i, lora in enumerate(loras):
        state, alphas = read(lora, architecture)
        mine = {k: v for k, v in state.items() if k.startswith(prefix + ".")}
        if not mine:
            continue
        _check_modules(lora, prefix, mine, target)
        name = f"nitro_edge_{i}"
        try:
            if component == "generator":
                cls.load_lora_into_unet(mine, alphas, target, adapter_name=name)
                target.fuse_lora(lora_scale=lora.scale, adapter_names=[name])
                target.unload_lora()
            else:
                cls.load_lora_into_text_encoder(mine, alphas, target, prefix=prefix, adapter_name=name)
                fuse_text_encoder_lora(target, lora_scale=lora.scale, adapter_names=[name])
                recurse_remove_peft_layers(target)
        except (RuntimeError, ValueError) as exc:  # shape mismatches: a LoRA of another size or architecture
            raise SourceError(
                f"LoRA {lora.path.name} does not fit this {architecture} model's {component}: "
                f"{str(exc).splitlines()[0][:300]}"
            ) from exc


def _check_modules(lora: Lora, prefix: str, state: dict, target) -> None:
    """Refuse keys whose module does not exist in the model (PEFT would skip them with a warning),
    after the key conversion diffusers itself applies before loading (old diffusers names such as
    `to_k_lora.down`, which its kohya conversion produces, to PEFT's `k_proj.lora_A`)."""
    from diffusers.utils.state_dict_utils import (
        convert_state_dict_to_diffusers,
        convert_state_dict_to_peft,
        convert_unet_state_dict_to_peft,
    )

    inner = {k[len(prefix) + 1 :]: v for k, v in state.items()}
    if prefix == "unet":
        peft = inner if "lora_A" in next(iter(inner)) else convert_unet_state_dict_to_peft(inner)
    else:
        peft = convert_state_dict_to_peft(convert_state_dict_to_diffusers(inner))
    modules = {name for name, _ in target.named_modules()}
    unknown = sorted({f"{prefix}.{key}" for key in peft if _SUFFIX.sub("", key) not in modules})
    if unknown:
        raise SourceError(
            f"LoRA {lora.path.name} has {len(unknown)} keys for modules this model does not have, "
            f"e.g. {unknown[:3]}; refusing rather than skipping them"
        )
