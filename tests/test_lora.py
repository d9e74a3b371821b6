"""LoRA files merged at export and in the torch backend, held to diffusers' own pipeline with the
same LoRA loaded and fused. The LoRAs are trained here for a few steps, so they change the image."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
from safetensors.torch import load_file, save_file  # noqa: E402
from test_oracle import diffusers_images  # noqa: E402

import nitro_edge  # noqa: E402
from nitro_edge import registry  # noqa: E402
from nitro_edge.errors import SourceError  # noqa: E402
from nitro_edge.export import export_bundle  # noqa: E402
from nitro_edge.export.parity import psnr_db  # noqa: E402

PROMPTS = ["a red circle at the top left", "a photograph of an astronaut riding a horse"]


def train_lora(source, arch, out, steps=10):
    """A rank-4 LoRA on the UNet's attention and the text encoders', trained a few steps on a
    denoising loss with a large learning rate; saved in diffusers' (PEFT) format."""
    import diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    cls = diffusers.StableDiffusionXLPipeline if arch == "sdxl" else diffusers.StableDiffusionPipeline
    pipe = cls.from_pretrained(source)
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if arch == "sdxl" else [])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        pipe.unet.add_adapter(
            LoraConfig(
                r=4, lora_alpha=8, init_lora_weights="gaussian", target_modules=["to_q", "to_k", "to_v", "to_out.0"]
            )
        )
        for enc in encoders:
            enc.add_adapter(
                LoraConfig(
                    r=4,
                    lora_alpha=8,
                    init_lora_weights="gaussian",
                    target_modules=["q_proj", "k_proj", "v_proj", "out_proj"],
                )
            )
    params = [p for m in [pipe.unet, *encoders] for p in m.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        ids = torch.randint(0, 49408, (2, 77), generator=g)
        hidden = torch.cat([enc(ids, output_hidden_states=True).hidden_states[-2] for enc in encoders], -1)
        added = None
        if arch == "sdxl":
            added = {"text_embeds": encoders[1](ids).text_embeds, "time_ids": torch.zeros(2, 6)}
        x = torch.randn(2, 4, 8, 8, generator=g)
        pred = pipe.unet(x, torch.tensor([500, 500]), hidden, added_cond_kwargs=added).sample
        loss = ((pred - torch.randn(pred.shape, generator=g)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    layers = {
        "unet_lora_layers": get_peft_model_state_dict(pipe.unet),
        "text_encoder_lora_layers": get_peft_model_state_dict(pipe.text_encoder),
    }
    if arch == "sdxl":
        layers["text_encoder_2_lora_layers"] = get_peft_model_state_dict(pipe.text_encoder_2)
    cls.save_lora_weights(str(out.parent), weight_name=out.name, **layers)
    return out


def to_kohya(diffusers_file, out):
    """The same LoRA in kohya's naming (lora_unet_… / lora_te_…, lora_down/lora_up, alpha), as
    sd-scripts writes it for SD1.x (diffusers' module names, dots as underscores)."""
    state = load_file(str(diffusers_file))
    kohya = {}
    for key, value in state.items():
        prefix, rest = key.split(".", 1)
        module, kind = rest.rsplit(".lora_", 1)
        name = {"unet": "lora_unet_", "text_encoder": "lora_te_"}[prefix] + module.replace(".", "_")
        kohya[f"{name}.lora_{'down' if kind.startswith('A') else 'up'}.weight"] = value
        if kind.startswith("A"):
            # The diffusers file records no alpha, so diffusers reads it as alpha = rank (scale 1).
            kohya[f"{name}.alpha"] = torch.tensor(float(value.shape[0]))
    save_file(kohya, str(out))
    return out


@pytest.fixture(scope="module")
def loras(tiny_source, tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    sd15 = train_lora(tiny_source("sd15"), "sd15", root / "style.safetensors")
    return {
        "sd15": sd15,
        "sd15_kohya": to_kohya(sd15, root / "style_kohya.safetensors"),
        "sdxl": train_lora(tiny_source("sdxl"), "sdxl", root / "xl.safetensors"),
    }


def _with_lora(path, scale):
    def prepare(pipe):
        pipe.load_lora_weights(str(path))
        pipe.fuse_lora(
            components=["unet", "text_encoder"] + (["text_encoder_2"] if hasattr(pipe, "text_encoder_2") else []),
            lora_scale=scale,
        )

    return prepare


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_exported_lora_matches_diffusers_fused_pipeline_on_every_target(
    arch, loras, tiny_source, tmp_path, monkeypatch
):
    source = tiny_source(arch)
    targets = [t.name for t in registry.TARGETS if t.installed()]
    out = export_bundle(source, tmp_path / "b", targets=targets, shift=500, loras=[f"{loras[arch]}:0.7"])
    manifest = json.loads((out / "manifest.json").read_text())
    recorded = manifest["provenance"]["source"]["loras"]
    assert [(r["file"], r["scale"]) for r in recorded] == [(loras[arch].name, 0.7)] and len(recorded[0]["sha256"]) == 64
    reference = diffusers_images(source, arch, PROMPTS, 2, 500, 7, monkeypatch, _with_lora(loras[arch], 0.7))
    plain = diffusers_images(source, arch, PROMPTS, 2, 500, 7, monkeypatch)
    assert psnr_db(plain, reference) < 40  # the LoRA changes the image
    for target in targets:
        backend = registry.backend_for_target(target)
        if not (backend.installed() and backend.predicts_here()):
            assert manifest["parity"][f"{target}/fp32"]["numeric"] is False  # spec-checked here (Core ML off macOS)
            continue
        ours = nitro_edge.load(out, backend=backend.name).generate(PROMPTS, steps=2, seed=7, output="numpy")
        assert psnr_db(reference, ours) >= 50, target  # the fp32 floor
    torch_images = nitro_edge.load(source, backend="torch", shift=500, loras=[f"{loras[arch]}:0.7"]).generate(
        PROMPTS, steps=2, seed=7, output="numpy"
    )
    assert np.abs(torch_images - reference).max() < 1e-4  # the torch backend, as the oracle holds it


def test_kohya_naming_gives_the_same_model(loras, tiny_source, tmp_path):
    a = nitro_edge.load(tiny_source("sd15"), backend="torch", loras=[loras["sd15"]])
    b = nitro_edge.load(tiny_source("sd15"), backend="torch", loras=[loras["sd15_kohya"]])
    np.testing.assert_allclose(
        a.generate(PROMPTS, seed=2, output="numpy"), b.generate(PROMPTS, seed=2, output="numpy"), atol=1e-6
    )


def test_bad_loras_are_refused_with_what_was_found(loras, tiny_source, tmp_path):
    src = tiny_source("sd15")
    with pytest.raises(SourceError, match="is for SDXL .* this model is sd15"):
        nitro_edge.load(src, backend="torch", loras=[loras["sdxl"]]).generate("a cat")
    state = load_file(str(loras["sd15"]))
    key = next(k for k in state if k.startswith("unet."))
    stray = {**state, key.replace("attn1", "attn9"): state[key].clone()}
    save_file(stray, str(tmp_path / "stray.safetensors"))
    with pytest.raises(SourceError, match=r"keys for modules this model does not have, e\.g\. \['unet\..*attn9"):
        nitro_edge.load(src, backend="torch", loras=[tmp_path / "stray.safetensors"])
    save_file({"weight": torch.zeros(3)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(SourceError, match="plain.safetensors"):
        nitro_edge.load(src, backend="torch", loras=[tmp_path / "plain.safetensors"])
    with pytest.raises(SourceError, match="FILE\\[:SCALE\\]|existing .safetensors"):
        nitro_edge.load(src, backend="torch", loras=[str(tmp_path / "missing.safetensors:x")])
