"""The embedded default model, nitro-shapes-64: a small one-step student used when no model is
given (its card is nitro_edge/assets/default_model/README.md).

Two forms ship in the package:
- assets/default_model/: the diffusers folder (fp16 safetensors), the source of truth, what
  `make default-model` retrains and what the torch backend and export read;
- assets/default_bundle/: that folder already exported (ONNX and OpenVINO, fp16, parity-checked),
  so the first `nitro-edge generate` needs only the onnx (or openvino) extra: no torch, no export,
  nothing written. `build_shipped_bundle()` makes it; its manifest records the sha256 of the
  source folder it came from, and a bundle that does not match the folder beside it is not used.
Only when the shipped bundle is missing or stale (a retrained model not yet re-exported) is the
folder exported once into the user's cache, which needs torch.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
from importlib import resources
from pathlib import Path

from nitro_edge.errors import MissingExtraError, SourceError

NAME = "nitro-shapes-64"
SHIPPED_TARGETS = ("onnx", "openvino")
SHIPPED_PRECISION = "fp16"  # half the size of fp32; 56 dB against torch, over the 35 dB floor
log = logging.getLogger(__name__)


def _asset(name: str) -> Path:
    return Path(str(resources.files("nitro_edge").joinpath(f"assets/{name}")))


def source_folder() -> Path:
    path = _asset("default_model")
    if not (path / "model_index.json").is_file():
        raise SourceError(
            f"the embedded default model is missing from {path}; reinstall nitro-edge or run `make default-model`"
        )
    return path


def shipped_bundle_folder() -> Path:
    return _asset("default_bundle")


def fingerprint(folder: Path) -> str:
    """sha256 over the folder's files (relative paths and contents), in path order."""
    digest = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(f.read_bytes()).digest())
    return digest.hexdigest()


def cache_dir() -> Path:
    root = os.environ.get("NITRO_EDGE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "nitro-edge"
    )
    return Path(root)


def default_bundle(report=None) -> Path:
    """The default model's bundle: the shipped one when it matches the source folder; otherwise one
    exported on first use into the cache (ONNX, and OpenVINO if installed, fp32; needs torch)."""
    from nitro_edge.bundle import Bundle, is_bundle

    source = source_folder()
    print_ = fingerprint(source)
    shipped = shipped_bundle_folder()
    if is_bundle(shipped):
        bundle = Bundle.open(shipped)
        if bundle.manifest.get("provenance", {}).get("source_fingerprint") == print_:
            return shipped
        log.warning(
            "the shipped default bundle does not match the default model beside it (retrained and "
            "not re-exported?); using an export of the model instead"
        )
    cached = cache_dir() / f"{NAME}-{print_[:12]}"
    if is_bundle(cached):
        Bundle.open(cached)
        return cached
    if importlib.util.find_spec("torch") is None:
        raise MissingExtraError(
            "the shipped default bundle is missing or stale and exporting the default model needs torch: run "
            "`pip install 'nitro-edge[torch,onnx]'`, or pass a bundle with -m"
        )
    from nitro_edge import registry
    from nitro_edge.export import export_bundle

    targets = [t.name for t in registry.TARGETS if t.name in SHIPPED_TARGETS and t.installed()]
    return export_bundle(source, cached, targets=targets, precision="fp32", report=report or (lambda m: None))


def build_shipped_bundle(dest: Path | None = None, report=None) -> Path:
    """Export the default model folder as the bundle the package ships (ONNX and OpenVINO, fp16),
    recording the folder's fingerprint, and its source path relative to the bundle."""
    from nitro_edge.bundle import MANIFEST, Bundle
    from nitro_edge.export import export_bundle

    source = source_folder()
    dest = Path(dest) if dest is not None else shipped_bundle_folder()
    work = dest.parent / f".{dest.name}.build"
    shutil.rmtree(work, ignore_errors=True)
    export_bundle(
        source, work, targets=list(SHIPPED_TARGETS), precision=SHIPPED_PRECISION, report=report or (lambda m: None)
    )
    manifest = json.loads((work / MANIFEST).read_text())
    provenance = manifest["provenance"]
    provenance["source"]["path"] = os.path.relpath(source, dest)  # the torch backend resolves it from the bundle
    provenance["source_fingerprint"] = fingerprint(source)
    provenance.pop("exported_at", None)  # a shipped file should not change when nothing else did
    (work / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    Bundle.open(work)  # reads back, every file checksummed
    if dest.exists():
        old = dest.parent / f".{dest.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
        os.replace(work, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(work, dest)
    return dest


if __name__ == "__main__":  # python -m nitro_edge.default_model: re-export the shipped bundle
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(build_shipped_bundle(report=print))
