"""The embedded default model: the bundle the package ships is the export of the folder beside it."""

import numpy as np
import pytest

import nitro_edge
from nitro_edge import default_model
from nitro_edge.bundle import Bundle
from nitro_edge.export.parity import psnr_db

PROMPTS = ["a red circle at the top left", "a blue square in the centre"]


def test_the_shipped_bundle_records_the_folder_it_came_from():
    bundle = Bundle.open(default_model.shipped_bundle_folder())  # every file checksummed
    provenance = bundle.manifest["provenance"]
    assert provenance["source_fingerprint"] == default_model.fingerprint(default_model.source_folder())
    assert provenance["source"]["path"] == "../default_model"  # relative: the package can move
    targets = bundle.targets()
    assert targets["onnx"] == [default_model.SHIPPED_PRECISION]
    assert bundle.manifest["parity"][f"onnx/{default_model.SHIPPED_PRECISION}"]["numeric"] is True


def test_the_shipped_bundle_matches_a_fresh_export_and_torch(tmp_path):
    pytest.importorskip("torch")
    fresh = default_model.build_shipped_bundle(tmp_path / "fresh")
    shipped = default_model.shipped_bundle_folder()
    for target in ("onnx", "openvino"):
        pytest.importorskip({"onnx": "onnxruntime", "openvino": "openvino"}[target])
        ours = nitro_edge.load(shipped, backend=target).generate(PROMPTS, steps=2, seed=3, output="numpy")
        again = nitro_edge.load(fresh, backend=target).generate(PROMPTS, steps=2, seed=3, output="numpy")
        np.testing.assert_allclose(ours, again, atol=1e-6)
    reference = nitro_edge.load(default_model.source_folder(), backend="torch").generate(
        PROMPTS, steps=2, seed=3, output="numpy"
    )
    assert psnr_db(reference, ours) >= 35  # the fp16 floor
    assert nitro_edge.load(shipped, backend="torch").generate(PROMPTS, steps=2, seed=3, output="numpy").shape == (
        2,
        64,
        64,
        3,
    )  # the torch backend finds the folder from the bundle's relative source path
