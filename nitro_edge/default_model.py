"""The embedded default model: a small one-step student shipped inside the package (see its
README in nitro_edge/assets/default_model/), used when no model is given.

It ships as a diffusers folder of safetensors (the source of truth, a few MB). The first use
exports it once to a bundle in the user's cache (needs the torch extra); later uses, with any
backend, read that bundle.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from importlib import resources
from pathlib import Path

from nitro_edge.errors import MissingExtraError, SourceError

NAME = "nitro-shapes-64"


def source_folder() -> Path:
    path = Path(str(resources.files("nitro_edge").joinpath("assets/default_model")))
    if not (path / "model_index.json").is_file():
        raise SourceError(
            f"the embedded default model is missing from {path}; reinstall nitro-edge or run `make default-model`"
        )
    return path


def _fingerprint(folder: Path) -> str:
    digest = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f.relative_to(folder).as_posix().encode())
        digest.update(str(f.stat().st_size).encode())
    return digest.hexdigest()[:12]


def cache_dir() -> Path:
    root = os.environ.get("NITRO_EDGE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "nitro-edge"
    )
    return Path(root)


def default_bundle(report=None) -> Path:
    """The default model's bundle, exported on first use (ONNX, and OpenVINO if installed, fp32)."""
    from nitro_edge.bundle import Bundle, is_bundle

    source = source_folder()
    bundle = cache_dir() / f"{NAME}-{_fingerprint(source)}"
    if is_bundle(bundle):
        Bundle.open(bundle)
        return bundle
    if importlib.util.find_spec("torch") is None:
        raise MissingExtraError(
            "the default model is exported once on first use, which needs torch: run "
            "`pip install 'nitro-edge[torch,onnx]'`, or pass a bundle with -m"
        )
    from nitro_edge import registry
    from nitro_edge.export import export_bundle

    targets = [t.name for t in registry.TARGETS if t.name in ("onnx", "openvino") and t.installed()]
    return export_bundle(source, bundle, targets=targets, precision="fp32", report=report or (lambda m: None))
