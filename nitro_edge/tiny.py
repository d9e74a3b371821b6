"""Tiny SD1.5-, SD2.1- and SDXL-architecture pipelines with random weights, for tests and the demo.

They are built from the real diffusers/transformers classes and saved as ordinary diffusers
folders, with the real CLIP BPE vocabulary (see nitro_edge/assets/clip_bpe/README.md).
"""

from __future__ import annotations

import gzip
import json
from importlib import resources
from pathlib import Path

from nitro_edge._lazy import require
from nitro_edge.errors import InputError

ARCHS = ("sd15", "sd21", "sdxl")
TEXT_HIDDEN = 32
VAE_CHANNELS = (8, 16, 16, 16)  # four blocks: the usual 8x latent downscale
SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
    "steps_offset": 1,
}


def write_clip_tokenizer(folder: Path, pad_token: str = "<|endoftext|>") -> None:
    """Write CLIP's tokenizer (vocab.json, merges.txt, configs) from the vendored BPE merge list.

    The vocabulary is built as CLIP builds it: the 256 byte symbols, the same with '</w>', one
    token per merge, then the start and end tokens (49,408 in all).
    """
    transformers = require("transformers", "torch")
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    data = resources.files("nitro_edge").joinpath("assets/clip_bpe/bpe_simple_vocab_16e6.txt.gz").read_bytes()
    lines = gzip.decompress(data).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    tok = transformers.CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token=pad_token, model_max_length=77
    )
    tok.save_pretrained(str(folder))


def build_tiny_pipeline(arch: str, out: str | Path, seed: int = 0, sample_size: int = 8) -> Path:
    """Save a tiny random-weight pipeline of `arch` (sd15, sd21, sdxl) to `out`; returns `out`.

    `sample_size` is the UNet's latent size: images are 8 * sample_size pixels square.
    """
    if arch not in ARCHS:
        raise InputError(f"arch must be one of {ARCHS}, got {arch!r}")
    torch = require("torch", "torch")
    with torch.random.fork_rng(devices=[]):  # seeded, and the caller's global generator left as it was
        torch.manual_seed(seed)
        return _build_tiny_pipeline(arch, Path(out), sample_size)


def _build_tiny_pipeline(arch: str, out: Path, sample_size: int) -> Path:
    diffusers = require("diffusers", "torch")
    transformers = require("transformers", "torch")
    sdxl = arch == "sdxl"
    text_cfg = dict(
        hidden_size=TEXT_HIDDEN,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=49408,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=0 if arch == "sd21" else 49407,
        hidden_act="gelu" if arch == "sd21" else "quick_gelu",
        projection_dim=32,
    )
    encoders = {"text_encoder": transformers.CLIPTextModel(transformers.CLIPTextConfig(**text_cfg))}
    if sdxl:
        encoders["text_encoder_2"] = transformers.CLIPTextModelWithProjection(
            transformers.CLIPTextConfig(**{**text_cfg, "hidden_act": "gelu"})
        )
    unet_cfg = dict(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN * len(encoders),
        attention_head_dim=(2, 4) if sdxl else 4,
        norm_num_groups=8,
    )
    if sdxl:
        unet_cfg.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + 32,
            use_linear_projection=True,
            transformer_layers_per_block=(1, 2),
        )
    elif arch == "sd21":
        unet_cfg.update(use_linear_projection=True)
    unet = diffusers.UNet2DConditionModel(**unet_cfg)
    vae = diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(VAE_CHANNELS),
        up_block_types=("UpDecoderBlock2D",) * len(VAE_CHANNELS),
        block_out_channels=VAE_CHANNELS,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=sample_size * 8,
        scaling_factor=0.13025 if sdxl else 0.18215,
    )
    scheduler = diffusers.EulerDiscreteScheduler.from_config(SCHEDULER)
    pad = "!" if arch == "sd21" else "<|endoftext|>"
    out.mkdir(parents=True, exist_ok=True)
    write_clip_tokenizer(out / "tokenizer", pad_token=pad)
    tokenizer = transformers.CLIPTokenizer.from_pretrained(str(out / "tokenizer"))
    parts = dict(unet=unet, vae=vae, scheduler=scheduler, tokenizer=tokenizer, **encoders)
    if sdxl:
        write_clip_tokenizer(out / "tokenizer_2", pad_token="!")
        parts["tokenizer_2"] = transformers.CLIPTokenizer.from_pretrained(str(out / "tokenizer_2"))
        pipe = diffusers.StableDiffusionXLPipeline(**parts)
    else:
        pipe = diffusers.StableDiffusionPipeline(
            **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
    pipe.save_pretrained(str(out))
    return out


def build_tiny_autoencoder_tiny(out: str | Path, seed: int = 0) -> Path:
    """A tiny random-weight AutoencoderTiny (TAESD layout, 8x downscale) saved as a diffusers folder."""
    torch = require("torch", "torch")
    diffusers = require("diffusers", "torch")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = diffusers.AutoencoderTiny(
            encoder_block_out_channels=(8, 8, 8, 8),
            decoder_block_out_channels=(8, 8, 8, 8),
            num_encoder_blocks=(1, 1, 1, 1),
            num_decoder_blocks=(1, 1, 1, 1),
            latent_channels=4,
        )
    vae.save_pretrained(str(out))
    return Path(out)
