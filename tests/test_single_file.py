"""Single-file checkpoints (the original SD1.5 / SD2.1 / SDXL .safetensors layout) as sources:
tiny pipelines written out in that layout give the same images as their folders."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
from safetensors.torch import save_file  # noqa: E402

import nitro_edge  # noqa: E402
from nitro_edge.errors import SourceError  # noqa: E402
from nitro_edge.models.single_file_writer import write as write_single_file  # noqa: E402
from nitro_edge.tiny import write_clip_tokenizer  # noqa: E402

PROMPTS = ["a red circle at the top left", "a photograph of an astronaut riding a horse"]


def conventional_tiny(arch, out):
    """A tiny pipeline that keeps the rules single files rely on (32 groups; SD1.5 8 heads, SD2.1 and
    SDXL one head per 64 channels; CLIP one head per 64 of width), so its file describes it fully."""
    torch.manual_seed(0)
    sdxl = arch == "sdxl"
    text = dict(
        hidden_size=64,
        intermediate_size=64,
        num_attention_heads=1,
        num_hidden_layers=2,
        vocab_size=49408,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        projection_dim=64,
        hidden_act="gelu" if arch == "sd21" else "quick_gelu",
        pad_token_id=0 if arch == "sd21" else 1,
    )
    encoders = {"text_encoder": transformers.CLIPTextModel(transformers.CLIPTextConfig(**text))}
    if sdxl:
        encoders["text_encoder_2"] = transformers.CLIPTextModelWithProjection(
            transformers.CLIPTextConfig(**{**text, "hidden_act": "gelu", "pad_token_id": 0})
        )
    unet = dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        norm_num_groups=32,
        cross_attention_dim=64 * len(encoders),
    )
    if arch == "sd15":
        unet.update(
            block_out_channels=(32, 64),
            attention_head_dim=8,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        )
    else:
        unet.update(block_out_channels=(64, 128), attention_head_dim=(1, 2), use_linear_projection=True)
        if sdxl:
            unet.update(
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                transformer_layers_per_block=(1, 2),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                addition_embed_type="text_time",
                addition_time_embed_dim=8,
                projection_class_embeddings_input_dim=6 * 8 + 64,
            )
        else:
            unet.update(
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            )
    vae = diffusers.AutoencoderKL(
        block_out_channels=(32, 64, 64, 64),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=32,
        scaling_factor=0.13025 if sdxl else 0.18215,
    )
    scheduler = diffusers.EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    write_clip_tokenizer(out / "tokenizer", pad_token="!" if arch == "sd21" else "<|endoftext|>")
    parts = dict(
        unet=diffusers.UNet2DConditionModel(**unet),
        vae=vae,
        scheduler=scheduler,
        tokenizer=transformers.CLIPTokenizer.from_pretrained(str(out / "tokenizer")),
        **encoders,
    )
    if sdxl:
        write_clip_tokenizer(out / "tokenizer_2", pad_token="!")
        parts["tokenizer_2"] = transformers.CLIPTokenizer.from_pretrained(str(out / "tokenizer_2"))
        diffusers.StableDiffusionXLPipeline(**parts).save_pretrained(str(out))
    else:
        diffusers.StableDiffusionPipeline(
            **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        ).save_pretrained(str(out))
    return out


@pytest.mark.parametrize("arch", ["sd15", "sd21", "sdxl"])
def test_a_single_file_gives_the_images_of_its_folder(arch, tmp_path, monkeypatch):
    monkeypatch.setenv("NITRO_EDGE_CACHE", str(tmp_path / "cache"))
    folder = conventional_tiny(arch, tmp_path / "folder")
    single = write_single_file(folder, tmp_path / f"tiny-{arch}.safetensors")
    want = nitro_edge.load(folder, backend="torch", shift=500).generate(PROMPTS, steps=2, seed=4, output="numpy")
    # A single file does not record its native size (SD1.5 and SD2.1: 512, SDXL: 1024): give the folder's.
    got = nitro_edge.load(single, backend="torch", shift=500, height=64, width=64).generate(
        PROMPTS, steps=2, seed=4, output="numpy"
    )
    assert want.std() > 0.01
    np.testing.assert_allclose(got, want, atol=1e-5)
    converted = list((tmp_path / "cache" / "single-file").iterdir())
    assert len(converted) == 1  # converted once; the next load reads the folder
    nitro_edge.load(single, backend="torch", shift=500)
    assert list((tmp_path / "cache" / "single-file").iterdir()) == converted
    if arch == "sd15":  # and through export: the bundle records the file it came from
        from nitro_edge.export import export_bundle

        bundle = export_bundle(single, tmp_path / "b", targets=["onnx"], shift=500, height=64, width=64)
        recorded = json.loads((bundle / "manifest.json").read_text())["provenance"]["source"]["single_file"]
        assert recorded["file"] == single.name and recorded["architecture"] == "sd15" and len(recorded["sha256"]) == 64
        onnx = nitro_edge.load(bundle).generate(PROMPTS, steps=2, seed=4, output="numpy")
        assert np.abs(onnx - want).max() < 1e-3


def test_bad_single_files_are_refused_with_what_was_found(tmp_path, tiny_source, monkeypatch):
    monkeypatch.setenv("NITRO_EDGE_CACHE", str(tmp_path / "cache"))
    folder = conventional_tiny("sd15", tmp_path / "folder")
    single = write_single_file(folder, tmp_path / "model.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(single.read_bytes()[: single.stat().st_size // 2])
    with pytest.raises(SourceError, match="truncated.safetensors is truncated: its tensors need"):
        nitro_edge.load(truncated, backend="torch")
    save_file(
        {"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": torch.zeros(2)},
        str(tmp_path / "sd3.safetensors"),
    )
    with pytest.raises(SourceError, match="looks like Stable Diffusion 3"):
        nitro_edge.load(tmp_path / "sd3.safetensors", backend="torch")
    save_file({"lora_unet_down_blocks_0.lora_down.weight": torch.zeros(2)}, str(tmp_path / "lora.safetensors"))
    with pytest.raises(SourceError, match="looks like a LoRA"):
        nitro_edge.load(tmp_path / "lora.safetensors", backend="torch")
    save_file({"foo.weight": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(
        SourceError, match=r"not an SD1.5, SD2.1 or SDXL single-file checkpoint .* found keys like \['foo"
    ):
        nitro_edge.load(tmp_path / "other.safetensors", backend="torch")
    (tmp_path / "garbage.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(SourceError, match="not a readable safetensors file"):
        nitro_edge.load(tmp_path / "garbage.safetensors", backend="torch")
    with pytest.raises(SourceError, match="--prediction-type applies to single-file checkpoints only"):
        nitro_edge.load(tiny_source("sd15"), backend="torch", prediction_type="v_prediction")
