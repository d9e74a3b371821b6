"""Target options: ONNX graph fusion and ORT format, Core ML deployment target, compute units,
split-einsum attention and the generator in two chunks."""

import collections
import json
import subprocess
import sys

import numpy as np
import pytest

import nitro_edge
from nitro_edge.bundle import Bundle
from nitro_edge.errors import BundleError, InputError, ParityError
from nitro_edge.export import export_bundle
from nitro_edge.export.parity import psnr_db

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny_modules(tiny_source):
    """{arch: (spec of the generator, generator wrapper, a real batch-1 generator input)}."""
    from nitro_edge.export.reference import component_inputs
    from nitro_edge.models.loading import load_modules
    from nitro_edge.models.wrappers import as_component
    from nitro_edge.sampler import Sampler
    from nitro_edge.sources import resolve_source
    from nitro_edge.specs import COMPONENTS, component_specs

    out = {}
    for arch in ("sd15", "sdxl"):
        src = resolve_source(tiny_source(arch), shift=500)
        dims, tokenizers, modules = load_modules(src)
        specs = component_specs(dims)
        comps = {n: as_component(modules[n], specs[n]) for n in COMPONENTS[arch]}
        sampler = Sampler(dims=dims, params=src.params, tokenizers=tokenizers, components=comps, backend="torch")
        example = component_inputs(sampler, ["a red circle"])["generator"]
        out[arch] = (specs["generator"], modules["generator"], example)
    return out


def _torch_call(module, spec, arrays):
    with torch.inference_mode():
        return module(*(torch.from_numpy(arrays[t.name]) for t in spec.inputs))


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_generator_chunks_compose_to_the_generator(arch, tiny_modules):
    from nitro_edge.export.chunks import split_generator

    spec, generator, example = tiny_modules[arch]
    head, head_spec, _, tail, tail_spec, tail_example = split_generator(generator, spec, example)
    whole = _torch_call(generator, spec, example)[0].numpy()
    carried = _torch_call(head, head_spec, example)
    feed = {**example, **{t.name: o.numpy() for t, o in zip(head_spec.outputs, carried)}}
    parts = _torch_call(tail, tail_spec, feed)[0].numpy()
    np.testing.assert_allclose(parts, whole, atol=1e-5)
    assert [t.name for t in head_spec.inputs] == [t.name for t in spec.inputs]
    assert {t.name for t in tail_spec.inputs} >= {
        "sample",
        "timestep",
        "encoder_hidden_states",
        "mid_sample",
        "time_emb",
        "skip_0",
    }
    assert set(tail_example) == {t.name for t in tail_spec.inputs}


def test_split_einsum_attention_matches_the_default_and_is_restored(tiny_modules):
    from nitro_edge.export.coreml import SplitEinsumAttention, _attention

    spec, generator, example = tiny_modules["sd15"]
    before = {k: type(v) for k, v in generator.unet.attn_processors.items()}
    whole = _torch_call(generator, spec, example)[0].numpy()
    with _attention(generator, "split_einsum"):
        assert all(isinstance(p, SplitEinsumAttention) for p in generator.unet.attn_processors.values())
        split = _torch_call(generator, spec, example)[0].numpy()
    np.testing.assert_allclose(split, whole, atol=1e-5)
    assert {k: type(v) for k, v in generator.unet.attn_processors.items()} == before


def test_coreml_options_chunks_and_split_einsum(tiny_source, tmp_path):
    options = {"chunks": 2, "attention": "split_einsum", "deployment_target": "iOS17", "compute_units": "CPU_AND_NE"}
    out = export_bundle(
        tiny_source("sd15"),
        tmp_path / "b",
        targets=["coreml"],
        precision="fp16",
        shift=500,
        options={"coreml": options},
    )
    bundle = Bundle.open(out)
    art = bundle.artifact("generator", "coreml", "fp16")
    assert art["chunks"] == ["coreml/fp16/generator_chunk1.mlpackage", "coreml/fp16/generator_chunk2.mlpackage"]
    assert art["attention"] == "split_einsum" and art["compute_units"] == "CPU_AND_NE"
    assert art["minimum_deployment_target"] == "iOS17 / macOS14"
    assert "attention" not in bundle.artifact("vae_decoder", "coreml", "fp16")
    from nitro_edge.runtimes.coreml import check_spec

    report = check_spec(bundle, "fp16")
    assert report["generator"]["chunks"] == ["generator_chunk1.mlpackage", "generator_chunk2.mlpackage"]
    assert report["generator"]["outputs"] == ["denoised"]
    import coremltools as ct

    for package in bundle.artifact_parts("generator", "coreml", "fp16"):
        spec = ct.models.MLModel(str(package), skip_model_load=True).get_spec()
        assert spec.specificationVersion == 8  # iOS17 / macOS14


def test_a_chunk_missing_from_the_manifest_files_is_refused(tiny_source, tmp_path):
    out = export_bundle(
        tiny_source("sd15"),
        tmp_path / "b",
        targets=["coreml"],
        precision="fp32",
        shift=500,
        options={"coreml": {"chunks": 2}},
    )
    manifest = json.loads((out / "manifest.json").read_text())
    art = manifest["components"]["generator"]["artifacts"]["coreml"]["fp32"]
    art["files"] = [f for f in art["files"] if "chunk2" not in f]
    bundle = Bundle(out, manifest)
    with pytest.raises(BundleError, match="chunk coreml/fp32/generator_chunk2.mlpackage of generator"):
        bundle.artifact_parts("generator", "coreml", "fp32")


def test_a_rewrite_that_changes_the_generator_is_refused(tiny_source, tmp_path, monkeypatch):
    from nitro_edge.export import coreml

    monkeypatch.setattr(coreml, "REWRITE_TOLERANCE", 0.0)  # any summation-order difference now fails
    with pytest.raises(ParityError, match="rewritten for Core ML"):
        export_bundle(
            tiny_source("sd15"),
            tmp_path / "b",
            targets=["coreml"],
            precision="fp16",
            shift=500,
            options={"coreml": {"attention": "split_einsum"}},
        )
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    "precision", [pytest.param("fp32", marks=pytest.mark.slow), pytest.param("fp16", marks=pytest.mark.slow), "int8"]
)
def test_onnx_fusion_and_ort_format(precision, tiny_source, tmp_path):
    out = export_bundle(
        tiny_source("sd15"),
        tmp_path / "b",
        targets=["onnx"],
        precision=precision,
        shift=500,
        options={"onnx": {"optimize": True, "ort_format": True}},
    )
    bundle = Bundle.open(out)
    onnx = pytest.importorskip("onnx")
    graph = onnx.load(str(bundle.artifact_path("generator", "onnx", precision)), load_external_data=False).graph
    fused = collections.Counter(n.op_type for n in graph.node if n.domain == "com.microsoft")
    assert fused["MultiHeadAttention"] + fused["Attention"] > 0 and fused["SkipLayerNormalization"] > 0, fused
    assert bundle.artifact("generator", "onnx", precision)["graph_optimized"] is True
    parity = bundle.manifest["parity"][f"onnx/{precision}"]
    ort = parity["variants"]["ort_format"]
    assert set(ort["components"]) == {"text_encoder", "generator", "vae_decoder"} and ort["end_to_end_psnr_db"] > 0
    ref = nitro_edge.load(tiny_source("sd15"), backend="torch", shift=500).generate(
        "a red circle", seed=3, output="numpy"
    )
    for ort_format in (False, True):
        images = nitro_edge.load(out, backend="onnx", precision=precision, ort_format=ort_format).generate(
            "a red circle", seed=3, output="numpy"
        )
        assert psnr_db(ref, images) >= parity["floor"]["psnr_db"]


def test_ort_format_is_refused_without_its_files(tiny_bundle):
    with pytest.raises(BundleError, match="has no .ort file; export with --ort-format"):
        nitro_edge.load(tiny_bundle("sd15"), backend="onnx", ort_format=True)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"coreml": {"chunks": 3}}, r"coreml chunks must be one of \(1, 2\), got 3"),
        ({"coreml": {"deployment_target": "iOS15"}}, "coreml deployment_target must be one of"),
        (
            {"coreml": {"speed": "max"}},
            r"coreml options are \['attention', 'chunks', 'compute_units', 'deployment_target'\]",
        ),
        ({"onnx": {"optimize": "yes"}}, "onnx optimize must be true or false, got 'yes'"),
        ({"openvino": {"optimize": True}}, "openvino options are none, got"),
    ],
)
def test_bad_target_options_are_refused_before_any_work(options, match, tiny_source, tmp_path):
    targets = list(options)
    with pytest.raises(InputError, match=match):
        export_bundle(tiny_source("sd15"), tmp_path / "b", targets=targets, precision="fp32", options=options)
    assert not (tmp_path / "b").exists()


def test_options_for_a_target_not_exported_are_refused(tiny_source, tmp_path):
    with pytest.raises(InputError, match=r"options given for targets \['coreml'\]"):
        export_bundle(tiny_source("sd15"), tmp_path / "b", targets=["onnx"], options={"coreml": {"chunks": 2}})
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "nitro_edge.cli.main",
            "export",
            str(tiny_source("sd15")),
            "-o",
            str(tmp_path / "c"),
            "--target",
            "onnx",
            "--chunks",
            "2",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "options for ['coreml'] were given, but the export writes ['onnx']" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_passes_target_options(tiny_source, tmp_path):
    out = tmp_path / "b"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "nitro_edge.cli.main",
            "export",
            str(tiny_source("sd15")),
            "-o",
            str(out),
            "--target",
            "coreml",
            "--precision",
            "fp16",
            "--coreml-target",
            "macOS15",
            "--attention",
            "split_einsum",
            "--compute-units",
            "CPU_AND_GPU",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    art = Bundle.open(out).artifact("generator", "coreml", "fp16")
    assert (art["minimum_deployment_target"], art["attention"], art["compute_units"]) == (
        "macOS15 / iOS18",
        "split_einsum",
        "CPU_AND_GPU",
    )
