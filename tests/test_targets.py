"""Every target x precision on the tiny models, the fp16 overflow fallback, and the tiny decoder."""

import shutil

import numpy as np
import pytest

import nitro_edge
from nitro_edge import registry
from nitro_edge.bundle import Bundle
from nitro_edge.errors import InputError, SourceError
from nitro_edge.export import export_bundle
from nitro_edge.export.parity import psnr_db

torch = pytest.importorskip("torch")

# One representative per target and precision family runs by default (int8 weights, int8 with
# activations, palettised weights); the whole matrix runs with -m slow. fp32 and fp16 on every
# target are covered by default elsewhere (the fixture bundles, test_sdxl_fp16_on_every_target).
REPRESENTATIVE = {
    ("onnx", "int8"),
    ("openvino", "int8"),
    ("coreml", "int8"),
    ("openvino", "int8-hybrid"),
    ("openvino", "int8-act"),
    ("coreml", "pal6"),
}
MATRIX = [
    pytest.param(t.name, p, marks=[] if (t.name, p) in REPRESENTATIVE else [pytest.mark.slow], id=f"{t.name}-{p}")
    for t in registry.TARGETS
    for p in t.precisions
]


@pytest.fixture(scope="module")
def matrix_bundles(tiny_source, tmp_path_factory):
    """precision -> one sd15 bundle holding every installed target that supports it (exported on first use)."""
    root = tmp_path_factory.mktemp("matrix")
    bundles = {}

    def get(precision):
        if precision not in bundles:
            targets = [t.name for t in registry.TARGETS if precision in t.precisions and t.installed()]
            bundles[precision] = export_bundle(
                tiny_source("sd15"), root / precision, targets=targets, precision=precision, shift=500
            )
        return bundles[precision]

    return get


@pytest.mark.parametrize("target, precision", MATRIX)
def test_every_target_and_precision_passes_its_gate(target, precision, matrix_bundles, tiny_source):
    if not registry.target(target).installed():
        pytest.skip(
            f"the {target} converter is not installed (pip install 'nitro-edge[{registry.target(target).extra}]')"
        )
    bundle = Bundle.open(matrix_bundles(precision))
    parity = bundle.manifest["parity"][f"{target}/{precision}"]
    for name in ("text_encoder", "generator", "vae_decoder"):
        art = bundle.manifest["components"][name]["artifacts"][target][precision]
        assert bundle.artifact_path(name, target, precision).exists()
    if target == "coreml":
        assert art["compute_units"] == "ALL" and art["minimum_deployment_target"].startswith("macOS14")
    if not registry.backend_for_target(target).predicts_here():
        assert parity["numeric"] is False and "macOS" in parity["reason"]
        weights = parity["spec"]["generator"]["weight_dtypes"]
        kind = {
            "fp32": "float32",
            "fp16": "float16",
            "int8": "int8",
            "pal4": "palette4",
            "pal6": "palette6",
            "pal8": "palette8",
        }[precision]
        assert kind in weights, weights
        return
    assert parity["numeric"] is True and parity["end_to_end_psnr_db"] >= parity["floor"]["psnr_db"]
    images = nitro_edge.load(bundle.root, backend=target, precision=precision).generate(
        ["a red circle", "a blue square"], steps=2, seed=5, output="numpy"
    )
    ref = nitro_edge.load(tiny_source("sd15"), backend="torch", shift=500).generate(
        ["a red circle", "a blue square"], steps=2, seed=5, output="numpy"
    )
    assert psnr_db(ref, images) >= parity["floor"]["psnr_db"]


def test_int8_act_quantises_the_decoder_only_where_its_int8_convolutions_read(matrix_bundles):
    """The decoder's activations are quantised in front of convolutions only: not the residual stream,
    normalisation or attention; the convolutions that read the residual stream (1x1 shortcuts, the
    upsampling, folded into four 2x2 convolutions) and the output convolution stay float."""
    ov = pytest.importorskip("openvino")
    bundle = Bundle.open(matrix_bundles("int8-act"))
    model = ov.Core().read_model(str(bundle.artifact_path("vae_decoder", "openvino", "int8-act")))
    ops = model.get_ordered_ops()
    activations = [op for op in ops if op.get_type_name() == "FakeQuantize"]
    readers = {t.get_node().get_type_name() for op in activations for t in op.output(0).get_target_inputs()}
    assert activations and readers == {"Convolution"}, readers
    convolutions = [op for op in ops if op.get_type_name() == "Convolution"]
    quantised = [op.get_friendly_name() for op in convolutions if _reads_quantised(op)]
    residual = [op.get_friendly_name() for op in convolutions if "conv_shortcut" in op.get_friendly_name()]
    upsampling = [op.get_friendly_name() for op in convolutions if "upsamplers" in op.get_friendly_name()]
    assert residual and len(upsampling) == 4 * 3 and not set(residual + upsampling) & set(quantised)
    assert "Interpolate" not in {op.get_type_name() for op in ops}  # folded
    assert convolutions[-1].get_friendly_name() not in quantised  # the output convolution
    # all the others but conv_in and post_quant_conv
    assert len(quantised) == len(convolutions) - len(residual) - len(upsampling) - 3


def _reads_quantised(op) -> bool:
    """Whether an OpenVINO op's data input comes from a FakeQuantize."""
    return op.input_value(0).get_node().get_type_name() == "FakeQuantize"


def test_precision_not_offered_by_a_target_is_refused(tiny_source, tmp_path):
    with pytest.raises(InputError, match="precision pal4 is not available for \\['onnx'\\]"):
        export_bundle(tiny_source("sd15"), tmp_path / "b", targets=["onnx"], precision="pal4")


def test_sdxl_fp16_on_every_target(tiny_source, tmp_path):
    out = export_bundle(tiny_source("sdxl"), tmp_path / "b", targets=["onnx", "openvino", "coreml"], precision="fp16")
    parity = Bundle.open(out).manifest["parity"]
    assert parity["onnx/fp16"]["end_to_end_psnr_db"] >= 35 and parity["openvino/fp16"]["end_to_end_psnr_db"] >= 35
    assert set(parity["coreml/fp16"]["spec"]) == {"text_encoder", "text_encoder_2", "generator", "vae_decoder"}


def test_fp16_overflow_is_detected_and_the_component_kept_fp32(tiny_source, tmp_path):
    """A decoder whose activations exceed fp16's range (65504) gives Inf/NaN in fp16: keep it fp32."""
    from diffusers import AutoencoderKL

    src = shutil.copytree(tiny_source("sd15"), tmp_path / "src")
    vae = AutoencoderKL.from_pretrained(src / "vae")
    with torch.no_grad():
        vae.decoder.conv_in.weight.mul_(1e5)  # GroupNorm after it hides the scale in fp32 only
    vae.save_pretrained(src / "vae")
    out = export_bundle(src, tmp_path / "b", targets=["onnx"], precision="fp16")
    manifest = Bundle.open(out).manifest
    art = manifest["components"]["vae_decoder"]["artifacts"]["onnx"]["fp16"]
    assert art["precision"] == "fp32" and ("NaN" in art["fallback_reason"] or "SNR" in art["fallback_reason"])
    assert manifest["components"]["generator"]["artifacts"]["onnx"]["fp16"]["precision"] == "fp16"
    assert manifest["parity"]["onnx/fp16"]["end_to_end_psnr_db"] >= 35


def test_tiny_decoder_on_every_target(tiny_source, tmp_path):
    from nitro_edge.tiny import build_tiny_autoencoder_tiny

    taesd = build_tiny_autoencoder_tiny(tmp_path / "taesd")
    out = export_bundle(
        tiny_source("sd15"), tmp_path / "b", targets=["onnx", "openvino", "coreml"], precision="fp16", tiny_vae=taesd
    )
    manifest = Bundle.open(out).manifest
    assert manifest["provenance"]["source"]["tiny_vae"] == str(taesd)
    sizes = {
        t: sum(
            manifest["files"][f]["bytes"]
            for f in manifest["components"]["vae_decoder"]["artifacts"][t]["fp16"]["files"]
        )
        for t in ("onnx", "openvino")
    }
    assert all(size < 200_000 for size in sizes.values()), sizes
    tiny = nitro_edge.load(out, backend="onnx", precision="fp16").generate("a cat", output="numpy")
    full = nitro_edge.load(tiny_source("sd15"), backend="torch").generate("a cat", output="numpy")
    assert tiny.shape == full.shape and not np.allclose(tiny, full)  # another decoder, same latents
    ref = nitro_edge.load(out, backend="torch").generate("a cat", output="numpy")
    assert psnr_db(ref, tiny) >= 35
    with pytest.raises(SourceError, match="AutoencoderTiny"):
        export_bundle(tiny_source("sd15"), tmp_path / "c", tiny_vae=tiny_source("sd15") / "vae")


def test_models_over_the_protobuf_limit_use_one_external_data_file(tiny_source, tmp_path, monkeypatch):
    """The >2 GB path, on a tiny model by lowering the limit: weights go to one .onnx.data file
    beside the graph, listed and checksummed in the manifest, and parity still holds."""
    import nitro_edge.export.onnx as onnx_target

    monkeypatch.setattr(onnx_target, "PROTOBUF_LIMIT", 200 * 1024**2)  # under the 256 MiB headroom: always external
    out = export_bundle(tiny_source("sd15"), tmp_path / "b", targets=["onnx"], precision="fp16")
    manifest = Bundle.open(out).manifest
    art = manifest["components"]["generator"]["artifacts"]["onnx"]["fp16"]
    assert art["files"] == ["onnx/fp16/generator.onnx", "onnx/fp16/generator.onnx.data"]
    graph, data = (
        (out / "onnx/fp16/generator.onnx").stat().st_size,
        (out / "onnx/fp16/generator.onnx.data").stat().st_size,
    )
    assert data > 300_000 and graph < 600_000  # the weights over 1 KiB live in the data file
    assert manifest["parity"]["onnx/fp16"]["end_to_end_psnr_db"] >= 35


def test_fp16_of_a_model_too_large_for_in_memory_shape_inference(tiny_source, tmp_path, monkeypatch):
    """Over the size where onnx's in-memory shape inference cannot run (a full-size UNet), the fp16
    converter still knows every tensor's type, so the ops kept fp32 get their casts (a full-size
    SD1.5 generator once failed to load: LayerNormalization bound to float16 and float)."""
    import nitro_edge.export.onnx as onnx_target

    monkeypatch.setattr(onnx_target, "PROTOBUF_LIMIT", 4096)  # every tiny model counts as large
    out = export_bundle(tiny_source("sd15"), tmp_path / "b", targets=["onnx"], precision="fp16")
    manifest = Bundle.open(out).manifest
    assert manifest["components"]["generator"]["artifacts"]["onnx"]["fp16"]["precision"] == "fp16"
    assert manifest["parity"]["onnx/fp16"]["end_to_end_psnr_db"] >= 35


def test_weights_scattered_over_many_files_are_gathered_into_one(tmp_path):
    """What torch.onnx writes for models over 2 GB (one file per tensor) becomes one page-aligned
    data file, tensor by tensor, and runs the same."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    from nitro_edge.export.onnx import gather_external_data

    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((64, 32)).astype(np.float32), rng.standard_normal((32, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    scattered = tmp_path / "scattered"
    scattered.mkdir()
    onnx.save_model(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
        str(scattered / "m.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=False,
        size_threshold=0,
    )
    assert len(list(scattered.iterdir())) == 3
    out = tmp_path / "out"
    out.mkdir()
    files = gather_external_data(scattered / "m.onnx", out / "m.onnx")
    assert [f.name for f in files] == ["m.onnx", "m.onnx.data"] and sorted(p.name for p in out.iterdir()) == [
        "m.onnx",
        "m.onnx.data",
    ]
    model = onnx.load(str(out / "m.onnx"), load_external_data=False)
    offsets = [int(next(e.value for e in t.external_data if e.key == "offset")) for t in model.graph.initializer]
    assert all(o % 4096 == 0 for o in offsets)
    x = rng.standard_normal((1, 64)).astype(np.float32)
    got = ort.InferenceSession(str(out / "m.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, x @ w1 @ w2, rtol=1e-5)


def test_quantize_memory_warning_counts_the_fp32_model_with_its_external_data(tmp_path):
    from nitro_edge.export.openvino import GIB, quantize_memory_warning

    onnx = tmp_path / "generator.onnx"
    onnx.write_bytes(b"graph")
    with open(tmp_path / "generator.onnx.data", "wb") as data:
        data.truncate(4 * GIB)  # sparse: the size counts, no disk is used
    (tmp_path / "vae_decoder.onnx.data").write_bytes(b"another component's weights")
    warning = quantize_memory_warning(onnx, available=8 * GIB)
    assert "4.0 GiB fp32 model" in warning and "about 11.6 GiB" in warning and "8.0 GiB is available" in warning
    assert "int8 (weights only)" in warning
    assert quantize_memory_warning(onnx, available=12 * GIB) is None


def test_an_int8_hybrid_export_warns_before_quantising_what_will_not_fit(tiny_source, tmp_path, monkeypatch, caplog):
    psutil = pytest.importorskip("psutil")
    from collections import namedtuple

    memory = namedtuple("memory", "available")
    monkeypatch.setattr(psutil, "virtual_memory", lambda: memory(0))
    caplog.set_level("WARNING", logger="nitro_edge.export.openvino")
    export_bundle(tiny_source("sd15"), tmp_path / "b", targets=["openvino"], precision="int8-hybrid", shift=500)
    warnings = [r.getMessage() for r in caplog.records if "killed for lack of memory" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("generator: quantising the activations")
