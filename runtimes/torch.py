"""PyTorch backend: a bundle's source folder loaded as torch modules (nitro_edge.models), as
components. Export traces the same modules, so this backend is the parity gate's reference."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from nitro_edge.errors import InputError, SourceError
from nitro_edge.sources import Source, resolve_source
from nitro_edge.specs import selected


def load_source(source: Source, height: int | None = None, width: int | None = None):
    """(dims, tokenizers, {component: callable}) for a source folder on the torch backend."""
    from nitro_edge.models.loading import load_components

    return load_components(source, height, width)


def load(bundle, precision: str = "fp32", components: Sequence[str] | None = None, **options) -> dict:
    """Torch components for a bundle, rebuilt from the source its manifest records (all of them,
    or only `components`)."""
    if options:
        raise InputError(f"the torch backend takes no options here, got {sorted(options)}")
    src = bundle.manifest.get("provenance", {}).get("source", {})
    # A relative source path is relative to the bundle (the shipped default bundle records its folder so).
    path = src.get("path") and (bundle.root / src["path"] if not Path(src["path"]).is_absolute() else Path(src["path"]))
    if not path or not path.is_dir():
        raise SourceError(f"the torch backend needs the bundle's source folder, which is not here: {src.get('path')!r}")
    from nitro_edge.models.lora import Lora

    loras = [Lora.recorded(entry) for entry in src.get("loras", [])]
    source = resolve_source(
        path, unet=src.get("unet_file"), shift=bundle.params.shift, tiny_vae=src.get("tiny_vae"), loras=loras
    )
    _, _, comps = load_source(source, bundle.dims.height, bundle.dims.width)
    return {name: comps[name] for name, _ in selected(bundle, components)}
