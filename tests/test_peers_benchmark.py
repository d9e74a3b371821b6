"""benchmarks/peers.py: the targets it reports (only pipelines at >= 40 dB against their own fp32 count),
the kernels and matmul peaks it reads from OpenVINO, and nitro-edge's bench saving the image it
compares. The peers themselves (openvino.genai, stable-diffusion.cpp, optimum) are the `peers` extra,
not installed by the default test environment."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
ov = pytest.importorskip("openvino")

import peers  # noqa: E402
from scale.children import in_child  # noqa: E402


def row(id_, family, seconds, decoder="full VAE", psnr=None, ref=None, rss=1.0):
    return {
        "id": id_,
        "label": id_,
        "family": family,
        "decoder": decoder,
        "ref": ref,
        "end_to_end_s": {"median": seconds},
        "peak_rss_gib": rss,
        "psnr_vs_own_fp32_db": psnr,
    }


def test_targets_count_only_pipelines_that_keep_40_db():
    rows = [
        row("diffusers", "diffusers", 40.0, rss=5.0),
        row("genai-f32", "genai", 12.0),
        row("genai-int8", "genai", 6.0, psnr=39.0, ref="genai-f32"),  # too far from its fp32: not counted
        row("sdcpp-f32", "sdcpp", 30.0),
        row("optimum-f32", "optimum", 13.0),
        row("nitro-int8-act", "nitro-edge", 7.0, psnr=35.0, rss=1.5),  # under 40 dB: not counted for speed
        row("nitro-int8-hybrid", "nitro-edge", 8.0, psnr=48.0, rss=2.5),
        row("fastsd-f32", "fastsd", 6.0, decoder="tiny decoder"),
        row("nitro-tiny-int8-hybrid", "nitro-edge", 2.0, decoder="tiny decoder", psnr=55.0),
    ]
    lines = "\n".join(peers.targets(rows, rows[0]))
    assert "nitro-int8-hybrid vs best genai (genai-f32): 1.50× (target 1.5×: met)" in lines
    assert "vs best optimum (optimum-f32): 1.62×" in lines and "vs best sdcpp (sdcpp-f32): 3.75×" in lines
    assert "full VAE vs diffusers: 5.00× (target 4×: met)" in lines
    assert "nitro-tiny-int8-hybrid vs fastsd-f32: 3.00× (target 1.5×: met)" in lines
    assert "tiny decoder vs diffusers: 20.00× (target 15×: met)" in lines
    # memory counts every int8 full-VAE row (the quality condition is for speed): 1.5 / 5.0
    assert "nitro-int8-act: 0.30× diffusers' (target ≤ 0.4×: met)" in lines


def test_without_bf16_the_device_default_rows_are_left_out():
    with_bf16, without = {r.id for r in peers.plan(True)}, {r.id for r in peers.plan(False)}
    assert {"genai-default", "optimum-default", "nitro-fp32-default"} <= with_bf16 - without
    assert all(not i.endswith("-default") for i in without) and "genai-int8" in without
    assert all(r.ref in without for r in peers.plan(False) if r.ref)  # every reference row is measured


@pytest.mark.parametrize("bf16", [True, False])
def test_sdxl_rows_are_a_subset_with_their_references(bf16, tmp_path):
    sdxl = {r.id for r in peers.plan(bf16, "sdxl")}
    assert sdxl <= {r.id for r in peers.plan(bf16)} and {"diffusers", "nitro-int8-hybrid", "genai-int8"} <= sdxl
    assert all(r.ref in sdxl for r in peers.plan(bf16, "sdxl") if r.ref)
    # the SD1.5 rows keep their folder; SDXL at 512² is not mistaken for the native 1024² one
    assert peers.model_folder(tmp_path, "sd15", 512) == tmp_path / "sd15"
    assert peers.model_folder(tmp_path, "sdxl", 512) == tmp_path / "sdxl-512"
    assert peers.model_folder(tmp_path, "sdxl", 1024) == tmp_path / "sdxl"


def test_sdxl_comparisons_are_not_called_targets():
    rows = [row("diffusers", "diffusers", 40.0), row("nitro-int8-hybrid", "nitro-edge", 8.0, psnr=48.0)]
    assert peers.targets(rows, rows[0])[0].startswith("Targets")
    sdxl = peers.targets(rows, rows[0], "sdxl")
    assert "set on SD1.5" in sdxl[0] and "full VAE vs diffusers: 5.00×" in "\n".join(sdxl)


def test_nitro_rows_quote_the_gate_at_the_precision_they_compute_in(tmp_path):
    parity = {"end_to_end_psnr_db": 102.9, "variants": {"device_default": {"passed": True, "end_to_end_psnr_db": 49.4}}}
    (tmp_path / "manifest.json").write_text(json.dumps({"parity": {"openvino/fp32": parity}}))
    by_id = {p.id: p for p in peers.plan(True)}
    assert peers.gate_psnr(tmp_path, by_id["nitro-fp32-f32"]) == 102.9
    assert peers.gate_psnr(tmp_path, by_id["nitro-fp32-default"]) == 49.4
    parity["variants"]["device_default"] = {"passed": False, "reason": "under its floor"}
    (tmp_path / "manifest.json").write_text(json.dumps({"parity": {"openvino/fp32": parity}}))
    assert peers.gate_psnr(tmp_path, by_id["nitro-tiny-fp32-default"]) is None  # not counted for speed


def test_psnr_of_images(tmp_path):
    import numpy as np
    from PIL import Image

    a = np.full((8, 8, 3), 100, np.uint8)
    b = a.copy()
    b[0, 0, 0] = 110  # one channel of one pixel off by 10: MSE 100 / 192
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(b).save(tmp_path / "b.png")
    assert peers.psnr(tmp_path / "a.png", tmp_path / "a.png") == float("inf")
    assert peers.psnr(tmp_path / "a.png", tmp_path / "b.png") == pytest.approx(10 * np.log10(255**2 * 192 / 100))


def test_matmul_peaks_and_the_kernels_that_ran():
    result = in_child("child_gemm_peak", 256, 2, script=peers.PEERS)
    assert set(result) >= {"f32", "bf16", "int8"}
    for figures in (result["f32"], result["bf16"], result["int8"]):
        assert figures["flops_per_s"] > 0 and figures["kernels"]
    assert any(" u8 " in k or " i8 " in k for k in result["int8"]["kernels"]), result["int8"]["kernels"]


def test_kernels_of_a_bundle_and_the_bench_image(tiny_source, tmp_path):
    from nitro_edge.bench import measure
    from nitro_edge.export import export_bundle

    bundle = export_bundle(tiny_source("sd15"), tmp_path / "b", targets=["openvino"], precision="fp32", shift=500)
    kernels = in_child("child_kernels", str(bundle), "fp32", "f32", script=peers.PEERS)["kernels"]
    assert set(kernels) == {"generator", "vae_decoder"}
    assert any(k.startswith("Convolution f32 ") for k in kernels["vae_decoder"]), kernels
    image = tmp_path / "seed0.png"
    r = measure(str(bundle), "openvino", "fp32", 1, 1, prompt="a blue square", image=str(image))
    assert image.is_file() and r["end_to_end_s"]["median"] > 0
    json.dumps(r)  # what the benchmark stores


def test_a_cached_failed_row_is_reported_not_measured_again_with_keep_failed(tmp_path, monkeypatch):
    folder = tmp_path / "sdxl-512"
    for done in (folder / "source" / "model_index.json", tmp_path / "taesd" / "config.json"):
        done.parent.mkdir(parents=True)
        done.write_text("{}")
    rows = folder / "peers"
    rows.mkdir()
    (rows / "diffusers.json").write_text(json.dumps(row("diffusers", "diffusers", 18.0)))
    oom = {"id": "nitro-int8-hybrid", "failed": "child_export failed: killed by signal 9 (out of memory?)"}
    (rows / "nitro-int8-hybrid.json").write_text(json.dumps(oom))

    def no_child(*args, **kwargs):
        raise AssertionError(f"measured again: {args}")

    monkeypatch.setattr(peers, "make_export", no_child)
    results = peers.measure(tmp_path, 3, print, ["nitro-int8-hybrid"], "sdxl", 512, retry=False)
    assert [r["id"] for r in results] == ["diffusers", "nitro-int8-hybrid"]
    assert results[1]["failed"] == oom["failed"] and results[1]["family"] == "nitro-edge"
    with pytest.raises(AssertionError, match="measured again"):  # the default measures a failed row again
        peers.measure(tmp_path, 3, print, ["nitro-int8-hybrid"], "sdxl", 512)


def test_an_export_reused_by_a_later_invocation_still_reports_what_it_cost(tmp_path, monkeypatch):
    made = iter([{"export_s": 734.0, "peak_rss_gib": 10.1}, {}])  # made by the first call, reused by the second

    def fake_make(key, out, *args):
        return out / key, next(made)

    monkeypatch.setattr(peers, "_make_export", fake_make)
    first = peers.make_export("bundle-int8-act-full", tmp_path, tmp_path / "source", tmp_path / "taesd", "sd15", 512)
    again = peers.make_export("bundle-int8-act-full", tmp_path, tmp_path / "source", tmp_path / "taesd", "sd15", 512)
    assert first == again == (tmp_path / "bundle-int8-act-full", {"export_s": 734.0, "peak_rss_gib": 10.1})


def test_decoder_int8_rows_on_the_tiny_decoder(tiny_source, tmp_path):
    """benchmarks/decoder_int8.py on the tiny SD1.5 decoder: the calibration an int8-act export uses, the
    folded decoder equal to diffusers' in f32, and int8-act's placement closer to torch than NNCF's own,
    with int8 convolution kernels in every quantised row."""
    import decoder_int8

    data = decoder_int8.record(tiny_source("sd15"), None, tmp_path)
    assert len(data["calibration"]) == 16 and data["latents"].shape[0] == data["images"].shape[0] == 2
    rows = {}
    for label, ir, operations, convolutions, output in decoder_int8.ROWS:
        if output is None:
            rows[label] = decoder_int8.measure(str(tmp_path / f"{ir}.xml"), data, 1, "f32")
            continue
        model = decoder_int8.quantise(tmp_path / f"{ir}.xml", data["calibration"], operations, convolutions, output)
        rows[label] = decoder_int8.measure(model, data, 1, None)
    unfolded, folded = rows[decoder_int8.ROWS[0][0]], rows[decoder_int8.ROWS[1][0]]
    assert unfolded["psnr_db"] > 100 and folded["psnr_db"] > 100, rows  # f32: the fold is the same function
    nncf_own, ours = rows[decoder_int8.ROWS[2][0]], rows[decoder_int8.ROWS[-1][0]]
    assert ours["psnr_db"] > nncf_own["psnr_db"] + 3, rows
    quantised = [rows[label] for label, *_, output in decoder_int8.ROWS if output is not None]
    assert all(any(k.lower().endswith("i8") for k in r["convolutions"]) for r in quantised), rows  # int8 kernels
