"""Single-file checkpoints (the original `.safetensors` layout of SD1.5, SD2.1 and SDXL that A1111,
ComfyUI and Forge load) as sources: the architecture is read from the keys, every size the
weights show (channels, layers, widths, vocabulary) from their shapes, and the rest (attention
heads, group norm, VAE scaling, scheduler, tokenizers) from the architecture's published
configuration below, so nothing is fetched. diffusers' own converters map the weights; the result
is saved once as a diffusers folder in the cache, which every later use reads.

A single file does not record its attention head count: SD1.5's UNet uses 8 heads per block,
SD2.1's and SDXL's one head per 64 channels, CLIP text towers one per 64 of their width; files
that break these rules convert to another model. SD2.x files do not say whether they predict
epsilon (512² "base" models, SD-Turbo) or v (768² models): `prediction_type` says, epsilon unless
given.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
from pathlib import Path

from nitro_edge._lazy import require
from nitro_edge.errors import SourceError

UNET = "model.diffusion_model."
VAE = "first_stage_model."
CLIP_SD15 = "cond_stage_model.transformer."
OPENCLIP_SD21 = "cond_stage_model.model."
CLIP_SDXL = "conditioner.embedders.0.transformer."
OPENCLIP_SDXL = "conditioner.embedders.1.model."
# What each architecture's published configuration fixes that the weights do not show.
ARCH = {
    "sd15": {
        "pipeline": "StableDiffusionPipeline",
        "unet_heads": "8 per block",
        "image": 512,
        "scaling": 0.18215,
        "text": [("text_encoder", CLIP_SD15, "clip", "quick_gelu", "<|endoftext|>")],
    },
    "sd21": {
        "pipeline": "StableDiffusionPipeline",
        "unet_heads": "1 per 64 channels",
        "image": 512,
        "scaling": 0.18215,
        "text": [("text_encoder", OPENCLIP_SD21, "openclip", "gelu", "!")],
    },
    "sdxl": {
        "pipeline": "StableDiffusionXLPipeline",
        "unet_heads": "1 per 64 channels",
        "image": 1024,
        "scaling": 0.13025,
        "text": [
            ("text_encoder", CLIP_SDXL, "clip", "quick_gelu", "<|endoftext|>"),
            ("text_encoder_2", OPENCLIP_SDXL, "openclip", "gelu", "!"),
        ],
    },
}
SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "timestep_spacing": "leading",
    "steps_offset": 1,
}
# Other model families, named by a key of theirs, so the error says what the file is.
OTHERS = {
    "model.diffusion_model.joint_blocks.": "Stable Diffusion 3",
    "double_blocks.": "FLUX",
    "model.diffusion_model.double_blocks.": "FLUX",
    "conditioner.embedders.0.model.": "the SDXL refiner",
    "lora_unet_": "a LoRA (pass it with --lora)",
    "lora_te_": "a LoRA (pass it with --lora)",
    "encoder.down.0.block.0.conv1.weight": "a VAE alone",
    "model.diffusion_model.time_stack": "a video model",
}


def read_header(path: Path) -> dict:
    """The safetensors header {name: {dtype, shape, data_offsets}}, checked against the file's size."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > min(size - 8, 100 * 2**20):
                raise ValueError(f"its header claims {length} bytes")
            header = json.loads(f.read(length))
    except (OSError, struct.error, ValueError, UnicodeDecodeError) as exc:
        raise SourceError(f"{path} is not a readable safetensors file: {exc}") from exc
    header.pop("__metadata__", None)
    end = max((t["data_offsets"][1] for t in header.values()), default=0)
    if 8 + length + end > size:
        raise SourceError(f"{path} is truncated: its tensors need {8 + length + end} bytes, the file has {size}")
    return header


def detect(header: dict, path: Path) -> str:
    """sd15, sd21 or sdxl from the keys, or SourceError naming what the file looks like."""
    keys = header.keys()
    has = lambda prefix: any(k.startswith(prefix) for k in keys)  # noqa: E731
    if has(UNET + "input_blocks.") and has(VAE):
        if has(OPENCLIP_SDXL) and has(CLIP_SDXL):
            return "sdxl"
        if has(OPENCLIP_SD21):
            return "sd21"
        if has(CLIP_SD15):
            return "sd15"
    for marker, what in OTHERS.items():
        if has(marker) or marker in keys:
            raise SourceError(f"{path.name} looks like {what}, not an SD1.5, SD2.1 or SDXL checkpoint")
    sample = sorted(keys)[:3]
    raise SourceError(
        f"{path.name} is not an SD1.5, SD2.1 or SDXL single-file checkpoint (a UNet under "
        f"{UNET!r}, a VAE under {VAE!r} and their text encoders); found keys like {sample}"
    )


def cached_folder(path: Path, cache: Path, prediction_type: str = "epsilon") -> tuple[Path, str]:
    """The diffusers folder converted from `path` (made on first use), and the architecture."""
    path = Path(path)
    header = read_header(path)
    architecture = detect(header, path)
    stat = path.stat()
    key = hashlib.sha256(
        json.dumps([path.name, stat.st_size, stat.st_mtime_ns, prediction_type, sorted(header)]).encode()
    ).hexdigest()[:16]
    folder = cache / "single-file" / f"{path.stem}-{key}"
    if (folder / "model_index.json").is_file():
        return folder, architecture
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        convert(path, header, architecture, tmp, prediction_type)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder, architecture


def convert(path: Path, header: dict, architecture: str, out: Path, prediction_type: str) -> Path:
    """Write `path` as a diffusers pipeline folder at `out`."""
    torch = require("torch", "torch")
    diffusers = require("diffusers", "torch")
    transformers = require("transformers", "torch")
    from diffusers.loaders import single_file_utils as sfu
    from safetensors.torch import load_file

    from nitro_edge.tiny import write_clip_tokenizer

    if prediction_type not in ("epsilon", "v_prediction"):
        raise SourceError(f"prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r}")
    arch = ARCH[architecture]
    shapes = {k: v["shape"] for k, v in header.items()}
    state = load_file(str(path))
    parts = {}
    texts = []
    for name, prefix, kind, act, pad in arch["text"]:
        config = text_config(shapes, prefix, kind, act)
        cls = transformers.CLIPTextModelWithProjection if name == "text_encoder_2" else transformers.CLIPTextModel
        model = cls(transformers.CLIPTextConfig(**config))
        if kind == "clip":
            weights = sfu.convert_ldm_clip_checkpoint(state, remove_prefix=prefix)
        else:
            last = config["num_hidden_layers"]
            if architecture == "sd21":  # SD2 reads the penultimate layer: the file's last one is unused
                state = {k: v for k, v in state.items() if not k.startswith(f"{prefix}transformer.resblocks.{last}.")}
            weights = sfu.convert_open_clip_checkpoint(model, state, prefix=prefix)
            if name != "text_encoder_2":
                weights.pop("text_projection.weight", None)
        _load(model, weights, f"{path.name}'s {name}")
        parts[name] = model
        tokenizer = out / name.replace("text_encoder", "tokenizer")
        write_clip_tokenizer(tokenizer, pad_token=pad)
        texts.append(transformers.CLIPTokenizer.from_pretrained(str(tokenizer)))
    pooled = parts["text_encoder_2"].config.projection_dim if architecture == "sdxl" else 0
    unet_cfg = unet_config(shapes, architecture, pooled)
    unet = diffusers.UNet2DConditionModel(**unet_cfg)
    _load(unet, sfu.convert_ldm_unet_checkpoint(state, unet_cfg), f"{path.name}'s UNet")
    vae_cfg = vae_config(shapes, architecture)
    vae = diffusers.AutoencoderKL(**vae_cfg)
    _load(vae, sfu.convert_ldm_vae_checkpoint(state, vae_cfg), f"{path.name}'s VAE")
    scheduler = diffusers.EulerDiscreteScheduler.from_config({**SCHEDULER, "prediction_type": prediction_type})
    kwargs = dict(unet=unet, vae=vae, scheduler=scheduler, text_encoder=parts["text_encoder"], tokenizer=texts[0])
    if architecture == "sdxl":
        pipe = diffusers.StableDiffusionXLPipeline(
            **kwargs, text_encoder_2=parts["text_encoder_2"], tokenizer_2=texts[1]
        )
    else:
        pipe = diffusers.StableDiffusionPipeline(
            **kwargs, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
    with torch.no_grad():
        pipe.save_pretrained(str(out))
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    (out / "nitro_edge_single_file.json").write_text(
        json.dumps(
            {
                "file": path.name,
                "path": str(path.resolve()),
                "sha256": digest.hexdigest(),
                "architecture": architecture,
                "prediction_type": prediction_type,
            },
            indent=2,
        )
    )
    return out


def _load(model, weights: dict, what: str) -> None:
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise SourceError(
            f"{what} does not fit the layout its keys imply: {len(missing)} missing (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )


def _count(shapes: dict, pattern: str) -> int:
    found = {int(m.group(1)) for k in shapes if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def text_config(shapes: dict, prefix: str, kind: str, act: str) -> dict:
    """A CLIPTextConfig's sizes from the tower's weights: width, depth, MLP, vocabulary, positions."""
    if kind == "clip":
        p = prefix + "text_model."
        vocab, hidden = shapes[p + "embeddings.token_embedding.weight"]
        positions = shapes[p + "embeddings.position_embedding.weight"][0]
        layers = _count(shapes, re.escape(p) + r"encoder\.layers\.(\d+)\.")
        intermediate = shapes[p + "encoder.layers.0.mlp.fc1.weight"][0]
        projection = hidden
    else:
        vocab, hidden = shapes[prefix + "token_embedding.weight"]
        positions = shapes[prefix + "positional_embedding"][0]
        layers = _count(shapes, re.escape(prefix) + r"transformer\.resblocks\.(\d+)\.")
        intermediate = shapes[prefix + "transformer.resblocks.0.mlp.c_fc.weight"][0]
        projection = shapes[prefix + "text_projection"][1] if prefix + "text_projection" in shapes else hidden
        if prefix == OPENCLIP_SD21:
            layers -= 1  # the penultimate layer is SD2's output
    if hidden % 64:
        raise SourceError(f"the text encoder under {prefix!r} is {hidden} wide; CLIP towers are multiples of 64")
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": hidden // 64,
        "max_position_embeddings": positions,
        "hidden_act": act,
        "projection_dim": projection,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 1 if prefix != OPENCLIP_SD21 else 0,
    }


def unet_config(shapes: dict, architecture: str, pooled_dim: int) -> dict:
    """UNet2DConditionModel settings from the LDM UNet's weights and the architecture's rules."""
    p = UNET
    blocks = _count(shapes, re.escape(p) + r"input_blocks\.(\d+)\.")
    # Level of each input block: conv_in, then per level `layers` resnets and (not on the last) a downsampler.
    downsamplers = sorted(
        int(m.group(1)) for k in shapes if (m := re.match(re.escape(p) + r"input_blocks\.(\d+)\.0\.op\.weight$", k))
    )
    layers = downsamplers[0] - 1 if downsamplers else blocks - 1
    levels = len(downsamplers) + 1
    channels, attention, depth = [], [], []
    for level in range(levels):
        first = level * (layers + 1) + 1
        channels.append(shapes[f"{p}input_blocks.{first}.0.out_layers.3.weight"][0])
        attention.append(f"{p}input_blocks.{first}.1.proj_in.weight" in shapes)
        depth.append(_count(shapes, re.escape(f"{p}input_blocks.{first}.1.transformer_blocks.") + r"(\d+)\."))
    attn_key = next(k for k in shapes if k.startswith(p) and k.endswith("attn2.to_k.weight"))
    proj_key = next(k for k in shapes if k.startswith(p) and k.endswith(".proj_in.weight"))
    heads = [8] * levels if architecture == "sd15" else [c // 64 for c in channels]
    config = {
        "sample_size": ARCH[architecture]["image"] // 8,
        "in_channels": shapes[p + "input_blocks.0.0.weight"][1],
        "out_channels": shapes[p + "out.2.weight"][0],
        "block_out_channels": channels,
        "layers_per_block": layers,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
        "cross_attention_dim": shapes[attn_key][1],
        "attention_head_dim": heads,
        "use_linear_projection": len(shapes[proj_key]) == 2,
        "transformer_layers_per_block": [max(d, 1) for d in depth],
        "norm_num_groups": 32,
    }
    if architecture == "sdxl":
        total = shapes[p + "label_emb.0.0.weight"][1]
        config.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=(total - pooled_dim) // 6,
            projection_class_embeddings_input_dim=total,
        )
    return config


def vae_config(shapes: dict, architecture: str) -> dict:
    """AutoencoderKL settings from the LDM VAE's weights and the architecture's scaling factor."""
    p = VAE
    levels = _count(shapes, re.escape(p) + r"encoder\.down\.(\d+)\.")
    return {
        "in_channels": shapes[p + "encoder.conv_in.weight"][1],
        "out_channels": shapes[p + "decoder.conv_out.weight"][0],
        "latent_channels": shapes[p + "post_quant_conv.weight"][0],
        "block_out_channels": [shapes[f"{p}encoder.down.{i}.block.0.conv1.weight"][0] for i in range(levels)],
        "layers_per_block": _count(shapes, re.escape(p) + r"encoder\.down\.0\.block\.(\d+)\."),
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "norm_num_groups": 32,
        "sample_size": ARCH[architecture]["image"],
        "scaling_factor": ARCH[architecture]["scaling"],
    }
