"""The sampler API across backends: auto choice, options, cancellation, threads, bench."""

import json
import subprocess
import sys
import threading

import numpy as np
import pytest

import nitro_edge
from nitro_edge.api import auto_order
from nitro_edge.errors import Cancelled, InputError, MissingExtraError

pytest.importorskip("torch")


def test_auto_picks_an_installed_backend_and_says_which(tiny_bundle, caplog):
    import logging

    with caplog.at_level(logging.INFO):
        sampler = nitro_edge.load(tiny_bundle("sd15"))
    assert sampler.backend == "onnx"  # the fixture bundle holds only ONNX artifacts
    # This host's order, worked out here from what the CPU and the OS are (the registry's rule).
    intel = "GenuineIntel" in open("/proc/cpuinfo").read() if sys.platform == "linux" else False
    expected = (
        ("coreml", "onnx", "openvino")
        if sys.platform == "darwin"
        else (("openvino", "onnx") if intel else ("onnx", "openvino"))
    )
    assert auto_order() == expected
    assert f"backend auto chose {sampler.backend}" in caplog.text


def test_backend_options_are_checked(tiny_bundle):
    with pytest.raises(InputError, match="providers .* are not available"):
        nitro_edge.load(tiny_bundle("sd15"), backend="onnx", providers=["NoSuchExecutionProvider"])
    sampler = nitro_edge.load(tiny_bundle("sd15"), backend="onnx", threads=1)
    assert sampler.generate("a cat", output="numpy").shape == (1, 64, 64, 3)
    with pytest.raises(InputError, match="backend must be 'auto' or one of"):
        nitro_edge.load(tiny_bundle("sd15"), backend="tensorrt")


def test_coreml_backend_off_macos_says_so(tiny_bundle):
    if sys.platform == "darwin":
        pytest.skip("on macOS Core ML predicts")
    with pytest.raises(MissingExtraError, match="predicts on macOS only"):
        nitro_edge.load(tiny_bundle("sd15"), backend="coreml")


def test_progress_callback_reports_and_cancels(tiny_bundle):
    sampler = nitro_edge.load(tiny_bundle("sd15"))
    seen = []
    sampler.generate("a cat", steps=3, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    with pytest.raises(Cancelled, match="after step 2 of 4"):
        sampler.generate("a cat", steps=4, progress=lambda done, total: done < 2)
    assert sampler.generate("a cat", steps=1, output="numpy").shape == (1, 64, 64, 3)  # still usable


def test_eight_threads_give_the_sequential_images(tiny_bundle):
    sampler = nitro_edge.load(tiny_bundle("sdxl"))
    jobs = [(f"prompt number {i}", 1 + i % 4, i) for i in range(8)]
    sequential = [sampler.generate(p, steps=s, seed=seed, output="numpy") for p, s, seed in jobs]
    results = [None] * 8

    def work(i):
        p, s, seed = jobs[i]
        results[i] = sampler.generate(p, steps=s, seed=seed, output="numpy")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(sequential, results):
        np.testing.assert_array_equal(a, b)


def test_bench_cli_writes_table_json_and_chart(tiny_bundle, tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "nitro_edge.cli.main",
            "bench",
            str(tiny_bundle("sd15")),
            "--runs",
            "2",
            "--json",
            str(tmp_path / "b.json"),
            "--plot",
            str(tmp_path / "b.png"),
        ],
        capture_output=True,
        text=True,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 0, r.stderr
    results = json.loads((tmp_path / "b.json").read_text())
    onnx = next(x for x in results if x["backend"] == "onnx")
    assert onnx["precision"] == "fp32" and onnx["runs"] == 2 and onnx["peak_rss_mib"] > 10
    assert set(onnx["components_s"]) == {"text_encoder", "generator", "vae_decoder"}
    assert 0 < onnx["end_to_end_s"]["min"] <= onnx["end_to_end_s"]["median"] <= onnx["end_to_end_s"]["max"]
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"
    assert "onnx" in r.stdout and "fp32" in r.stdout


def test_openvino_inference_precision_follows_the_bundle():
    """fp32/fp16 bundles compute in f32 (their parity); int8 bundles at the device's default
    (bf16 on CPUs that have it, so 8-bit weights are not unpacked to f32); an explicit value wins."""
    pytest.importorskip("openvino")
    from nitro_edge.runtimes.openvino import compile_config

    assert compile_config("fp32")["INFERENCE_PRECISION_HINT"] == "f32"
    assert compile_config("fp16")["INFERENCE_PRECISION_HINT"] == "f32"
    assert "INFERENCE_PRECISION_HINT" not in compile_config("int8")
    assert "INFERENCE_PRECISION_HINT" not in compile_config("int8-hybrid")
    assert compile_config("int8", inference_precision="f32")["INFERENCE_PRECISION_HINT"] == "f32"
    assert "INFERENCE_PRECISION_HINT" not in compile_config("fp32", inference_precision=None)
    assert compile_config("fp32", cache_dir="/tmp/c", threads=2) == {
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32",
        "CACHE_DIR": "/tmp/c",
        "INFERENCE_NUM_THREADS": 2,
    }
    with pytest.raises(InputError, match="hint must be one of"):
        compile_config("fp32", hint="FAST")


def test_load_can_open_only_some_components(tiny_bundle):
    """What the export gate uses to hold one component in memory at a time."""
    from nitro_edge.bundle import Bundle
    from nitro_edge.runtimes import onnx as onnx_rt

    bundle = Bundle.open(tiny_bundle("sd15"))
    assert list(onnx_rt.load(bundle, "fp32", components=["vae_decoder"])) == ["vae_decoder"]
    with pytest.raises(InputError, match=r"components must be among .* got \['unet'\]"):
        onnx_rt.load(bundle, "fp32", components=["unet"])


def test_openvino_computes_at_the_device_default_only_where_the_gate_held_it():
    """fp32/fp16 bundles run at the CPU's default (bf16 here) only when their gate measured that
    precision within the fp16 floors on a CPU with the same default; int8 always; else f32."""
    pytest.importorskip("openvino")
    from types import SimpleNamespace

    import openvino

    from nitro_edge.runtimes.openvino import _device_default, resolve_inference_precision

    here = _device_default(openvino.Core(), "CPU")

    def bundle(variant):
        variants = {"device_default": variant} if variant else {}
        return SimpleNamespace(manifest={"parity": {"openvino/fp32": {"variants": variants}}})

    assert resolve_inference_precision(bundle(None), "int8") is None
    if here == "f32":  # nothing to choose on a CPU without a faster default
        assert resolve_inference_precision(bundle(None), "fp32") is None
        return
    assert resolve_inference_precision(bundle(None), "fp32") == "f32"
    assert resolve_inference_precision(bundle({"passed": False, "inference_precision": here}), "fp32") == "f32"
    assert resolve_inference_precision(bundle({"passed": True, "inference_precision": "f16"}), "fp32") == "f32"
    assert resolve_inference_precision(bundle({"passed": True, "inference_precision": here}), "fp32") is None
