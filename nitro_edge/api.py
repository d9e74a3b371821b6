"""nitro_edge.load: a bundle or a source folder in, a Sampler out."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import platform
from pathlib import Path

from nitro_edge.bundle import Bundle, is_bundle
from nitro_edge.errors import InputError, MissingExtraError, SourceError
from nitro_edge.runtimes import BACKENDS, REQUIRES, TARGETS
from nitro_edge.sampler import Sampler
from nitro_edge.sources import is_pipeline_folder, resolve_source

log = logging.getLogger(__name__)



def auto_order() -> tuple[str, ...]:
    """Backends to try, best first: Core ML on macOS, OpenVINO on Intel CPUs, ONNX Runtime elsewhere."""
    if platform.system() == "Darwin":
        return ("coreml", "onnx", "openvino")
    if _intel_cpu():
        return ("openvino", "onnx")
    return ("onnx", "openvino")


def _intel_cpu() -> bool:
    try:
        return "GenuineIntel" in Path("/proc/cpuinfo").read_text(errors="replace")[:4096]
    except OSError:
        return "intel" in platform.processor().lower()


def _backend_module(backend: str):
    module, extra = BACKENDS[backend]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"backend {backend!r} needs `pip install 'nitro-edge[{extra}]'` ({exc})"
        ) from exc


def choose_backend(bundle: Bundle, precision: str) -> str:
    """The best backend that is installed and has artifacts in the bundle at `precision`."""
    targets = bundle.targets()
    for backend in auto_order():
        if precision in targets.get(TARGETS[backend], []) and importlib.util.find_spec(REQUIRES[backend]):
            return backend
    raise InputError(
        f"no installed backend can run this bundle at {precision}: it holds {targets}; "
        "install one with `pip install 'nitro-edge[onnx]'` or `pip install 'nitro-edge[openvino]'`"
    )


def load(
    path: str | Path,
    backend: str = "auto",
    *,
    precision: str = "fp32",
    unet: str | Path | None = None,
    shift: int | None = None,
    height: int | None = None,
    width: int | None = None,
    **options,
) -> Sampler:
    """A Sampler for a bundle (any backend) or a diffusers source folder (torch backend).

    `unet`, `shift`, `height` and `width` apply to a source folder, as in `nitro-edge export`.
    Backend options (for example `threads=` or `providers=` for onnx) pass through `options`.
    """
    path = Path(path)
    if backend != "auto" and backend not in BACKENDS:
        raise InputError(f"backend must be 'auto' or one of {sorted(BACKENDS)}, got {backend!r}")
    if is_bundle(path):
        source_args = {k: v for k, v in dict(unet=unet, shift=shift, height=height, width=width).items() if v}
        if source_args:
            raise InputError(f"{sorted(source_args)} apply to a source folder, not to a bundle ({path})")
        bundle = Bundle.open(path)
        if backend == "auto":
            backend = choose_backend(bundle, precision)
            log.info("backend auto chose %s (%s)", backend, precision)
        components = _backend_module(backend).load(bundle, precision, **options)
        return Sampler(
            dims=bundle.dims,
            params=bundle.params,
            tokenizers=bundle.tokenizers(),
            components=components,
            backend=backend,
        )
    if is_pipeline_folder(path) or not path.exists():
        if backend not in ("auto", "torch"):
            raise InputError(f"a source folder runs on the torch backend only (export it for {backend!r})")
        if options:
            raise InputError(f"the torch backend takes no options {sorted(options)} for a source folder")
        source = resolve_source(path, unet=unet, shift=shift)
        dims, tokenizers, components = _backend_module("torch").load_source(source, height, width)
        return Sampler(dims=dims, params=source.params, tokenizers=tokenizers, components=components, backend="torch")
    raise SourceError(f"{path} is neither a bundle (manifest.json) nor a diffusers pipeline folder (model_index.json)")
