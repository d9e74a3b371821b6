"""Shared fixtures: tiny real-class pipelines built once per test session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_source(tmp_path_factory):
    """A function arch -> path of a tiny pipeline folder of that architecture (built once each)."""
    from nitro_edge.tiny import build_tiny_pipeline

    built = {}

    def get(arch: str):
        if arch not in built:
            built[arch] = build_tiny_pipeline(arch, tmp_path_factory.mktemp(f"tiny_{arch}"))
        return built[arch]

    return get


@pytest.fixture(scope="session")
def tiny_bundle(tiny_source, tmp_path_factory):
    """A function arch -> path of an ONNX fp32 bundle exported from the tiny pipeline (once each)."""
    from nitro_edge.export import export_bundle

    built = {}

    def get(arch: str):
        if arch not in built:
            out = tmp_path_factory.mktemp(f"bundle_{arch}") / "bundle"
            built[arch] = export_bundle(tiny_source(arch), out, targets=["onnx"], precision="fp32", shift=500)
        return built[arch]

    return get
