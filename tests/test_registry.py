"""One record per backend: adding one (a module plus a record) reaches the auto order, load(),
the CLI's choices, bench and the export gate, with nothing else edited."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import nitro_edge
from nitro_edge import registry
from nitro_edge.errors import InputError

pytest.importorskip("onnxruntime")

FAKE_MODULE = textwrap.dedent('''
    """A backend that reads the ONNX artifacts with ONNX Runtime on one thread, and counts its loads."""
    from nitro_edge.runtimes import onnx as onnx_rt

    LOADS = []

    def load(bundle, precision="fp32", components=None, **options):
        LOADS.append(precision)
        return onnx_rt.load(bundle, precision, threads=1, components=components)

    def check_spec(bundle, precision):
        return {name: "checked by the fake backend" for name in bundle.specs}
''')
FAKE_RECORD = (
    'registry.Backend("fake", "fake_backend", extra="onnx", target="onnx", requires="onnxruntime", auto=(("*", -1),))'
)


@pytest.fixture
def fake_backend(tiny_bundle, tmp_path, monkeypatch):
    """The fake backend's module importable, and its record added, here and in child processes
    (after the fixture bundle is exported: the gate would run its artifacts with the fake too)."""
    tiny_bundle("sd15")
    (tmp_path / "fake_backend.py").write_text(FAKE_MODULE)
    (tmp_path / "sitecustomize.py").write_text(
        f"from nitro_edge import registry\nregistry.BACKENDS = ({FAKE_RECORD}, *registry.BACKENDS)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "BACKENDS", (eval(FAKE_RECORD), *registry.BACKENDS))
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
        "COLUMNS": "200",
    }


def test_a_new_backend_is_one_module_and_one_record(fake_backend, tiny_bundle, tmp_path):
    bundle = tiny_bundle("sd15")
    assert registry.auto_order()[0] == "fake"
    sampler = nitro_edge.load(bundle)  # auto
    assert sampler.backend == "fake"
    import fake_backend as module

    assert module.LOADS == ["fp32"]
    ours = sampler.generate("a red circle", seed=1, output="numpy")
    np.testing.assert_array_equal(
        ours, nitro_edge.load(bundle, backend="onnx").generate("a red circle", seed=1, output="numpy")
    )

    cli = [sys.executable, "-m", "nitro_edge.cli.main"]
    r = subprocess.run([*cli, "generate", "--help"], capture_output=True, text=True, env=fake_backend)
    assert r.returncode == 0 and "fake" in r.stdout, r.stdout
    r = subprocess.run(
        [*cli, "generate", "a cat", "-m", str(bundle), "--backend", "fake", "-o", str(tmp_path / "a.png")],
        capture_output=True,
        text=True,
        env=fake_backend,
    )
    assert r.returncode == 0 and "on fake" in r.stderr, r.stderr
    r = subprocess.run(
        [*cli, "bench", str(bundle), "--backend", "fake", "--runs", "1", "--json", str(tmp_path / "b.json")],
        capture_output=True,
        text=True,
        env=fake_backend,
    )
    assert r.returncode == 0, r.stderr
    assert [row["backend"] for row in json.loads((tmp_path / "b.json").read_text())] == ["fake"]


def test_the_gate_follows_the_record_of_the_backend_that_reads_a_target(tiny_source, tmp_path, monkeypatch):
    """A reader of ONNX artifacts that cannot predict on this platform: the export gate checks the
    spec through its module instead of running it, as it does for Core ML off macOS."""
    from nitro_edge.export import export_bundle

    (tmp_path / "fake_backend.py").write_text(FAKE_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    elsewhere = registry.Backend(
        "fake", "fake_backend", extra="onnx", target="onnx", requires="onnxruntime", predicts_on=("NoSuchOS",)
    )
    monkeypatch.setattr(registry, "BACKENDS", (elsewhere, *registry.BACKENDS))
    messages = []
    out = export_bundle(tiny_source("sd15"), tmp_path / "b", targets=["onnx"], report=messages.append)
    parity = json.loads((out / "manifest.json").read_text())["parity"]["onnx/fp32"]
    assert parity["numeric"] is False and "NoSuchOS" in parity["reason"]
    assert parity["spec"]["generator"] == "checked by the fake backend"
    assert any("numeric parity NOT checked" in m for m in messages)


@pytest.mark.parametrize(
    "tags, order",
    [
        (("darwin", "*"), ("coreml", "onnx", "openvino")),
        (("darwin", "intel", "*"), ("coreml", "onnx", "openvino")),
        (("intel", "*"), ("openvino", "onnx")),
        (("*",), ("onnx", "openvino")),
    ],
)
def test_auto_order_per_host(tags, order):
    assert registry.auto_order(tags) == order


def test_unknown_names_are_refused():
    with pytest.raises(InputError, match="backend must be 'auto' or one of"):
        registry.backend("tensorrt")
    with pytest.raises(InputError, match="target must be one of"):
        registry.target("tflite")
