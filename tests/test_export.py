"""ONNX export: the bundle it writes, its parity gate, and that a failed export leaves nothing."""

import json
import shutil

import numpy as np
import pytest

import nitro_edge
from nitro_edge.bundle import Bundle
from nitro_edge.errors import BundleError, InputError, ParityError
from nitro_edge.export import export_bundle, parity

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_manifest_records_the_model(arch, tiny_bundle):
    m = Bundle.open(tiny_bundle(arch)).manifest
    assert m["schema_version"] == 1 and m["architecture"] == arch
    assert m["sampler"]["shift"] == 500 and m["sampler"]["shift_source"] == "argument"
    assert m["sampler"]["original_inference_steps"] == 4
    assert m["sampler"]["noise_schedule"]["beta_schedule"] == "scaled_linear"
    assert m["dims"]["height"] == 64 and m["dims"]["vae_scale_factor"] == 8
    names = {"text_encoder", "generator", "vae_decoder"} | ({"text_encoder_2"} if arch == "sdxl" else set())
    assert set(m["components"]) == names
    gen = m["components"]["generator"]
    assert [t["name"] for t in gen["outputs"]] == ["denoised"]
    assert gen["artifacts"]["onnx"]["fp32"]["path"] == "onnx/fp32/generator.onnx"
    assert all(len(e["sha256"]) == 64 for e in m["files"].values())
    p = m["parity"]["onnx/fp32"]
    assert p["end_to_end_psnr_db"] >= 50 and max(c["max_abs"] for c in p["components"].values()) <= 1e-4


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
@pytest.mark.parametrize("steps", [1, 4])
def test_onnx_backend_matches_torch_backend(arch, steps, tiny_source, tiny_bundle):
    prompts = ["a red circle at the top left", "a blue square"]
    onnx_images = nitro_edge.load(tiny_bundle(arch), backend="onnx").generate(
        prompts, steps=steps, seed=3, output="numpy"
    )
    torch_images = nitro_edge.load(tiny_source(arch), backend="torch", shift=500).generate(
        prompts, steps=steps, seed=3, output="numpy"
    )
    assert parity.psnr_db(torch_images, onnx_images) >= 50
    assert np.abs(torch_images - onnx_images).max() < 1e-3


def test_torch_backend_reads_a_bundle_through_its_source(tiny_bundle):
    sampler = nitro_edge.load(tiny_bundle("sd15"), backend="torch")
    assert sampler.backend == "torch" and sampler.params.shift == 500


def test_same_seed_same_image_and_latents_replace_first_draw(tiny_bundle):
    from nitro_edge.sampler import initial_noise

    s = nitro_edge.load(tiny_bundle("sd15"))
    a = s.generate("a cat", steps=3, seed=11, output="numpy")
    assert np.array_equal(a, s.generate("a cat", steps=3, seed=11, output="numpy"))
    assert not np.array_equal(a, s.generate("a cat", steps=3, seed=12, output="numpy"))
    _, first = initial_noise(11, (1, *s.dims.latent_shape))
    np.testing.assert_array_equal(a, s.generate("a cat", steps=3, seed=11, latents=first, output="numpy"))
    pil = s.generate(["a", "b"], steps=1)
    assert len(pil) == 2 and pil[0].size == (64, 64)
    with pytest.raises(InputError, match="latents must be a numpy array of shape"):
        s.generate("a cat", latents=np.zeros((1, 4, 4, 4), np.float32))


def test_parity_failure_leaves_nothing_behind(tiny_source, tmp_path, monkeypatch):
    strict = {**parity.FLOORS, "fp32": parity.FLOORS["fp32"].__class__(component_max_abs=0.0, psnr_db=50)}
    monkeypatch.setattr(parity, "FLOORS", strict)
    out = tmp_path / "bundle"
    with pytest.raises(ParityError, match="differs from torch"):
        export_bundle(tiny_source("sd15"), out)
    assert list(tmp_path.iterdir()) == []


def test_export_into_a_non_bundle_folder_is_refused(tiny_source, tmp_path):
    (tmp_path / "stuff.txt").write_text("mine")
    with pytest.raises(BundleError, match="exists and is not a bundle"):
        export_bundle(tiny_source("sd15"), tmp_path)
    assert (tmp_path / "stuff.txt").read_text() == "mine"


def test_re_export_replaces_bundle_and_other_settings_are_refused(tiny_source, tmp_path):
    out = export_bundle(tiny_source("sd15"), tmp_path / "b", shift=250)
    before = Bundle.open(out).manifest["files"]
    export_bundle(tiny_source("sd15"), out, shift=250)
    assert Bundle.open(out).manifest["files"].keys() == before.keys()
    with pytest.raises(BundleError, match="other settings"):
        export_bundle(tiny_source("sd15"), out, shift=500)
    assert Bundle.open(out).params.shift == 250
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_resolution_is_checked_and_recorded(tiny_source, tmp_path):
    with pytest.raises(InputError, match="height must be a positive multiple of 16 for this model, got 72"):
        export_bundle(tiny_source("sd15"), tmp_path / "b", height=72)
    out = export_bundle(tiny_source("sd15"), tmp_path / "b", height=96, width=64)
    image = nitro_edge.load(out).generate("a cat", output="numpy")
    assert image.shape == (1, 96, 64, 3)


def test_tampered_bundle_is_refused(tiny_bundle, tmp_path):
    copy = shutil.copytree(tiny_bundle("sd15"), tmp_path / "b")
    path = copy / "onnx" / "fp32" / "vae_decoder.onnx"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match its sha256"):
        nitro_edge.load(copy)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda m: m.pop("dims"), r"lacks the fields \['dims'\]"),
        (lambda m: m.update(schema_version=99), "schema_version is 99; this nitro-edge reads 1"),
        (lambda m: m["files"].update({"../../etc/passwd": {"sha256": "0", "bytes": 1}}), "leaves the bundle"),
        (lambda m: m["files"].update({"/etc/passwd": {"sha256": "0", "bytes": 1}}), "leaves the bundle"),
        (lambda m: m.update(architecture="flux"), "architecture must be one of"),
    ],
)
def test_bad_manifests_are_refused(tiny_bundle, tmp_path, edit, match):
    copy = shutil.copytree(tiny_bundle("sd15"), tmp_path / "b")
    manifest = json.loads((copy / "manifest.json").read_text())
    edit(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=match):
        Bundle.open(copy)


def test_symlink_out_of_the_bundle_is_refused(tiny_bundle, tmp_path):
    copy = shutil.copytree(tiny_bundle("sd15"), tmp_path / "b")
    outside = tmp_path / "outside.onnx"
    shutil.move(copy / "onnx" / "fp32" / "vae_decoder.onnx", outside)
    (copy / "onnx" / "fp32" / "vae_decoder.onnx").symlink_to(outside)
    with pytest.raises(BundleError, match="resolves outside the bundle"):
        Bundle.open(copy)


def test_component_inputs_are_checked_where_they_enter(tiny_bundle):
    s = nitro_edge.load(tiny_bundle("sd15"))
    gen = s.components["generator"]
    with pytest.raises(InputError, match=r"generator.sample: expected dtype float32, got float64"):
        gen(
            sample=np.zeros((1, 4, 8, 8)),
            timestep=np.zeros(1, np.int64),
            encoder_hidden_states=np.zeros((1, 77, 32), np.float32),
        )
    with pytest.raises(InputError, match=r"expected shape \(batch, 4, 8, 8\), got \(1, 4, 9, 8\)"):
        gen(
            sample=np.zeros((1, 4, 9, 8), np.float32),
            timestep=np.zeros(1, np.int64),
            encoder_hidden_states=np.zeros((1, 77, 32), np.float32),
        )
