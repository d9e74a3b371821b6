"""Recognising sources: pipeline folders, NitroSD-style UNet files, and what is refused."""

import json
import shutil

import numpy as np
import pytest

import nitro_edge
from nitro_edge.errors import SourceError
from nitro_edge.sources import resolve_source

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("arch", ["sd15", "sd21", "sdxl"])
def test_architecture_is_recognised(arch, tiny_source):
    src = resolve_source(tiny_source(arch))
    assert src.architecture == arch
    assert (src.params.shift, src.shift_source) == (1000, "default")


def test_shift_comes_from_argument_then_scheduler_config(tiny_source, tmp_path):
    copy = shutil.copytree(tiny_source("sd15"), tmp_path / "src")
    assert resolve_source(copy, shift=250).shift_source == "argument"
    config_path = copy / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config["shifted_timestep"] = 500
    config_path.write_text(json.dumps(config))
    src = resolve_source(copy)
    assert (src.params.shift, src.shift_source) == (500, "scheduler_config")
    assert resolve_source(copy, shift=250).params.shift == 250


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: p / "missing", "source not found"),
        (lambda p: (p / "a.txt").write_text("x") and p / "a.txt", "is a file"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "has no model_index.json"),
    ],
)
def test_bad_sources_fail_with_one_line(tmp_path, make, match):
    with pytest.raises(SourceError, match=match) as err:
        resolve_source(make(tmp_path))
    assert "\n" not in str(err.value) and "expected" in str(err.value)


def test_unsupported_pipeline_class_is_refused(tiny_source, tmp_path):
    copy = shutil.copytree(tiny_source("sd15"), tmp_path / "src")
    (copy / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(SourceError, match="'FluxPipeline' pipeline; expected a diffusers SD1.5"):
        resolve_source(copy)


def test_missing_subfolder_is_named(tiny_source, tmp_path):
    copy = shutil.copytree(tiny_source("sdxl"), tmp_path / "src")
    shutil.rmtree(copy / "text_encoder_2")
    with pytest.raises(SourceError, match=r"lacks the subfolders \['text_encoder_2'\]"):
        resolve_source(copy)


def test_nitrosd_style_unet_file_replaces_the_unet(tiny_source, tmp_path):
    """A UNet .safetensors plus a base folder: the file's weights are the ones used."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    base = tiny_source("sdxl")
    unet = UNet2DConditionModel.from_pretrained(base / "unet")
    torch.manual_seed(1)
    state = {k: v + 0.05 * torch.randn_like(v) for k, v in unet.state_dict().items()}
    unet_file = tmp_path / "nitrosd-realism_unet.safetensors"
    save_file(state, str(unet_file))
    src = resolve_source(base, unet=unet_file, shift=250)
    assert src.licence.startswith("cc-by-nc") and src.unet_file == unet_file
    plain = nitro_edge.load(base, backend="torch", shift=250).generate("a cat", output="numpy")
    swapped = nitro_edge.load(base, backend="torch", unet=unet_file, shift=250).generate("a cat", output="numpy")
    assert np.abs(plain - swapped).max() > 1e-3

    save_file({"not_a_unet.weight": torch.zeros(2)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(SourceError, match="does not fit"):
        nitro_edge.load(base, backend="torch", unet=tmp_path / "bad.safetensors")
    (tmp_path / "trunc.safetensors").write_bytes(unet_file.read_bytes()[:1000])
    with pytest.raises(SourceError, match="cannot read UNet file"):
        nitro_edge.load(base, backend="torch", unet=tmp_path / "trunc.safetensors")
