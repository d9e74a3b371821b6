"""Core ML numerically: prediction needs macOS, so these run there and skip here with the reason."""

import sys

import pytest

import nitro_edge
from nitro_edge.export import export_bundle
from nitro_edge.export.parity import psnr_db

pytestmark = [
    pytest.mark.macos,
    pytest.mark.skipif(sys.platform != "darwin", reason="Core ML predicts on macOS only (conversion is tested here)"),
]


@pytest.mark.parametrize("precision, floor", [("fp16", 35.0), ("pal6", 20.0)])
def test_coreml_bundle_matches_torch(precision, floor, tiny_source, tmp_path):
    pytest.importorskip("coremltools")
    out = export_bundle(tiny_source("sd15"), tmp_path / "b", targets=["coreml"], precision=precision, shift=500)
    parity = (out / "manifest.json").read_text()
    assert '"numeric": true' in parity  # on macOS the gate itself runs the packages
    ours = nitro_edge.load(out, backend="coreml", precision=precision).generate(
        "a red circle", steps=2, seed=1, output="numpy"
    )
    ref = nitro_edge.load(tiny_source("sd15"), backend="torch", shift=500).generate(
        "a red circle", steps=2, seed=1, output="numpy"
    )
    assert psnr_db(ref, ours) >= floor
