"""nitro_edge.load: a bundle or a source folder in, a Sampler out."""

from __future__ import annotations

import logging
from pathlib import Path

from nitro_edge import registry
from nitro_edge.bundle import Bundle, is_bundle
from nitro_edge.errors import InputError, SourceError
from nitro_edge.sampler import OnDemand, Sampler
from nitro_edge.sources import is_pipeline_folder, resolve_source

log = logging.getLogger(__name__)
MEMORY = ("normal", "low")
auto_order = registry.auto_order  # kept here too: the name users of nitro_edge.api know


def choose_backend(bundle: Bundle, precision: str | None = None) -> tuple[str, str]:
    """(backend, precision): the best backend that is installed, runs here and has artifacts in the
    bundle at `precision` (None: the first of PRECISION_ORDER the bundle holds for that backend)."""
    targets = bundle.targets()
    for name in auto_order():
        b = registry.backend(name)
        held = targets.get(b.target, [])
        chosen = precision if precision in held else None if precision else pick_precision(held)
        if chosen and b.installed() and b.predicts_here():
            return name, chosen
    hints = " or ".join(f"`pip install 'nitro-edge[{registry.backend(n).extra}]'`" for n in auto_order())
    raise InputError(
        f"no installed backend can run this bundle{f' at {precision}' if precision else ''}: it holds {targets}; "
        f"install one with {hints}"
    )


# Which precision a bundle runs at when none is asked for: the most exact one it holds.
PRECISION_ORDER = ("fp32", "fp16", "int8-hybrid", "int8", "int8-act", "pal8", "pal6", "pal4")


def pick_precision(held) -> str | None:
    return next((p for p in PRECISION_ORDER if p in held), None)


def load(
    path: str | Path,
    backend: str = "auto",
    *,
    precision: str | None = None,
    unet: str | Path | None = None,
    shift: int | None = None,
    height: int | None = None,
    width: int | None = None,
    loras=(),
    prediction_type: str | None = None,
    memory: str = "normal",
    **options,
) -> Sampler:
    """A Sampler for a bundle (any backend) or a diffusers source folder (torch backend).

    `precision` picks the bundle's artifacts (None: its most exact, fp32 before fp16 before int8).
    `memory="low"` loads each component of a bundle when generation reaches it and releases it after
    (the text encoders, then the generator for all steps, then the decoder): peak memory about the
    largest component and its activations, at the cost of loading (and compiling) every call.
    `unet`, `shift`, `height`, `width` and `loras` ("FILE[:SCALE]" LoRA files, merged into the text
    encoder(s) and the UNet) apply to a source folder, as in `nitro-edge export`.
    Backend options (for example `threads=` or `providers=` for onnx) pass through `options`.
    """
    path = Path(path)
    if backend != "auto":
        registry.backend(backend)  # refuses an unknown name
    if memory not in MEMORY:
        raise InputError(f"memory must be one of {MEMORY}, got {memory!r}")
    if is_bundle(path):
        given = dict(
            unet=unet, shift=shift, height=height, width=width, loras=loras or None, prediction_type=prediction_type
        )
        source_args = {k: v for k, v in given.items() if v is not None}
        if source_args:
            raise InputError(f"{sorted(source_args)} apply to a source folder, not to a bundle ({path})")
        bundle = Bundle.open(path)
        if backend == "auto":
            backend, precision = choose_backend(bundle, precision)
            log.info("backend auto chose %s (%s)", backend, precision)
        else:
            registry.backend(backend).require()  # a backend that cannot run here says so first
        if precision is None:
            target = registry.backend(backend).target
            precision = pick_precision(bundle.targets().get(target, [])) if target else "fp32"
            if precision is None:
                raise InputError(f"this bundle has no {target} artifacts; it holds {bundle.targets()}")
        module = registry.backend(backend).load_module()
        if memory == "low":
            resolve = getattr(module, "compute_precision", None)
            components = OnDemand(
                lambda names: module.load(bundle, precision, components=names, **options),
                compute=resolve(bundle, precision, **options) if resolve else None,
            )
        else:
            components = module.load(bundle, precision, **options)
        return Sampler(
            dims=bundle.dims,
            params=bundle.params,
            tokenizers=bundle.tokenizers(),
            components=components,
            backend=backend,
            precision=precision,
        )
    if is_pipeline_folder(path) or not path.exists() or path.suffix == ".safetensors":
        if backend not in ("auto", "torch"):
            raise InputError(f"a source folder runs on the torch backend only (export it for {backend!r})")
        if options:
            raise InputError(f"the torch backend takes no options {sorted(options)} for a source folder")
        if memory != "normal":
            raise InputError('memory="low" loads a bundle\'s components one at a time; a source folder loads whole')
        source = resolve_source(path, unet=unet, shift=shift, loras=loras, prediction_type=prediction_type)
        dims, tokenizers, components = registry.backend("torch").load_module().load_source(source, height, width)
        return Sampler(dims=dims, params=source.params, tokenizers=tokenizers, components=components, backend="torch")
    raise SourceError(
        f"{path} is neither a bundle (manifest.json), a diffusers pipeline folder (model_index.json) nor a "
        "single-file .safetensors checkpoint"
    )
