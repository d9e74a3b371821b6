"""Full-size SD1.5, SD2.1-base and SDXL pipelines from their published configurations, with random
weights (no download), saved once as diffusers folders; and a full-size AutoencoderTiny."""

from __future__ import annotations

from pathlib import Path

SIZES = {"sd15": 512, "sd21": 512, "sdxl": 1024}  # native resolutions


def build(model: str, out: Path) -> Path:
    """Save the full-size `model` pipeline with random weights to `out` (once)."""
    if (out / "model_index.json").is_file():
        return out
    import diffusers
    import torch
    import transformers

    from nitro_edge.tiny import write_clip_tokenizer

    torch.manual_seed(0)
    clip_l = dict(
        hidden_size=768,
        intermediate_size=3072,
        num_attention_heads=12,
        num_hidden_layers=12,
        max_position_embeddings=77,
        vocab_size=49408,
        hidden_act="quick_gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        projection_dim=768,
    )
    vae = diffusers.AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=2,
        sample_size=SIZES[model],
        scaling_factor=0.13025 if model == "sdxl" else 0.18215,
    )
    sched = diffusers.EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    out.mkdir(parents=True, exist_ok=True)
    write_clip_tokenizer(out / "tokenizer", pad_token="!" if model == "sd21" else "<|endoftext|>")
    tok = transformers.CLIPTokenizer.from_pretrained(str(out / "tokenizer"))
    if model == "sd15":
        unet = diffusers.UNet2DConditionModel(
            sample_size=64,
            cross_attention_dim=768,
            attention_head_dim=8,
            layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        )
        text = transformers.CLIPTextModel(transformers.CLIPTextConfig(**clip_l))
    elif model == "sd21":  # SD2.1-base / SD-Turbo: OpenCLIP ViT-H text tower, linear projections
        unet = diffusers.UNet2DConditionModel(
            sample_size=64,
            cross_attention_dim=1024,
            attention_head_dim=(5, 10, 20, 20),
            layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            use_linear_projection=True,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        )
        text = transformers.CLIPTextModel(
            transformers.CLIPTextConfig(
                **{
                    **clip_l,
                    "hidden_size": 1024,
                    "intermediate_size": 4096,
                    "num_attention_heads": 16,
                    "num_hidden_layers": 23,
                    "hidden_act": "gelu",
                    "projection_dim": 512,
                    "pad_token_id": 0,
                }
            )
        )
    if model != "sdxl":
        diffusers.StableDiffusionPipeline(
            vae=vae,
            text_encoder=text,
            tokenizer=tok,
            unet=unet,
            scheduler=sched,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        ).save_pretrained(str(out))
        return out
    unet = diffusers.UNet2DConditionModel(
        sample_size=128,
        cross_attention_dim=2048,
        attention_head_dim=(5, 10, 20),
        layers_per_block=2,
        block_out_channels=(320, 640, 1280),
        transformer_layers_per_block=(1, 2, 10),
        use_linear_projection=True,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    )
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(**clip_l))
    text_2 = transformers.CLIPTextModelWithProjection(
        transformers.CLIPTextConfig(
            **{
                **clip_l,
                "hidden_size": 1280,
                "intermediate_size": 5120,
                "num_attention_heads": 20,
                "num_hidden_layers": 32,
                "hidden_act": "gelu",
                "projection_dim": 1280,
            }
        )
    )
    write_clip_tokenizer(out / "tokenizer_2", pad_token="!")
    tok_2 = transformers.CLIPTokenizer.from_pretrained(str(out / "tokenizer_2"))
    diffusers.StableDiffusionXLPipeline(
        vae=vae, text_encoder=text, text_encoder_2=text_2, tokenizer=tok, tokenizer_2=tok_2, unet=unet, scheduler=sched
    ).save_pretrained(str(out))
    return out


def build_taesd(out: Path) -> Path:
    if not (out / "config.json").is_file():
        import diffusers
        import torch

        torch.manual_seed(0)
        diffusers.AutoencoderTiny().save_pretrained(str(out))  # the TAESD layout at its published size
    return out
