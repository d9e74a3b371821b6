"""Export targets and backends, one record each. Everything that lists them derives from here: the
CLI's choices, `auto_order`, bench, the demo and the export gate. A new backend is one runtime
module with one load() plus one record in BACKENDS (and, if it reads a new artifact format, one
export module plus one record in TARGETS). Pure data: importing this imports nothing heavy.
"""

from __future__ import annotations

import importlib
import importlib.util
import platform
from dataclasses import dataclass, field
from pathlib import Path

from nitro_edge.errors import InputError, MissingExtraError


@dataclass(frozen=True)
class Target:
    """An artifact format a bundle can hold, written by nitro_edge.export.<name>."""

    name: str
    precisions: tuple[str, ...]
    extra: str  # the pip extra that installs its converter
    requires: tuple[str, ...]  # modules the conversion needs (checked without importing them)
    options: dict = field(default_factory=dict)  # option name -> allowed values (the CLI's choices)

    @property
    def module(self) -> str:
        return f"nitro_edge.export.{self.name}"

    def installed(self) -> bool:
        return all(importlib.util.find_spec(m) is not None for m in self.requires)


@dataclass(frozen=True)
class Backend:
    """A runtime that turns a bundle (or a source, for torch) into components."""

    name: str
    module: str  # has load(bundle, precision, components=None, **options)
    extra: str
    target: str | None  # the artifact format it reads; None: rebuilt from the bundle's source
    requires: str  # the module it needs installed (checked without importing it)
    # platform.system() values where it can run (predict) at all; empty: everywhere. Where it cannot,
    # the export gate checks its artifacts with the module's check_spec() instead of numerically.
    predicts_on: tuple[str, ...] = ()
    # Place in the auto order: (host tag, rank) pairs, looked up with the host's first matching tag
    # (tags: "darwin", "intel", "*"); lower runs first; no matching tag: never chosen automatically.
    auto: tuple[tuple[str, int], ...] = ()

    def installed(self) -> bool:
        return importlib.util.find_spec(self.requires) is not None

    def require(self) -> None:
        """MissingExtraError naming what to install (or where it runs) when this backend cannot run here."""
        if not self.predicts_here():
            raise MissingExtraError(
                f"the {self.name} backend predicts on {self.platforms} only; on this platform use onnx or openvino"
            )
        try:
            __import__(self.requires)
        except ImportError as exc:
            raise MissingExtraError(
                f"backend {self.name!r} needs `pip install 'nitro-edge[{self.extra}]'` ({exc})"
            ) from exc

    def predicts_here(self) -> bool:
        return not self.predicts_on or platform.system() in self.predicts_on

    @property
    def platforms(self) -> str:
        """Where it predicts, in words ("macOS")."""
        return ", ".join(PLATFORM_NAMES.get(p, p) for p in self.predicts_on) or "any platform"

    def load_module(self):
        """The runtime module, or MissingExtraError naming the extra that installs what it needs."""
        try:
            return importlib.import_module(self.module)
        except ImportError as exc:
            raise MissingExtraError(
                f"backend {self.name!r} needs `pip install 'nitro-edge[{self.extra}]'` ({exc})"
            ) from exc


PLATFORM_NAMES = {"Darwin": "macOS", "Linux": "Linux", "Windows": "Windows"}  # platform.system() -> words
TARGETS: tuple[Target, ...] = (
    Target("onnx", ("fp32", "fp16", "int8"), extra="onnx", requires=("onnx", "onnxruntime")),
    Target("openvino", ("fp32", "fp16", "int8", "int8-hybrid", "int8-act"), extra="openvino", requires=("openvino",)),
    Target(
        "coreml",
        ("fp32", "fp16", "int8", "pal4", "pal6", "pal8"),
        extra="coreml",
        requires=("coremltools",),
        options={
            "deployment_target": ("macOS13", "iOS16", "macOS14", "iOS17", "macOS15", "iOS18"),
            "compute_units": ("ALL", "CPU_AND_NE", "CPU_AND_GPU", "CPU_ONLY"),
            "attention": ("original", "split_einsum"),
        },
    ),
)
BACKENDS: tuple[Backend, ...] = (
    Backend(
        "onnx",
        "nitro_edge.runtimes.onnx",
        extra="onnx",
        target="onnx",
        requires="onnxruntime",
        auto=(("darwin", 1), ("intel", 1), ("*", 0)),
    ),
    Backend(
        "openvino",
        "nitro_edge.runtimes.openvino",
        extra="openvino",
        target="openvino",
        requires="openvino",
        auto=(("darwin", 2), ("intel", 0), ("*", 1)),
    ),
    Backend(
        "coreml",
        "nitro_edge.runtimes.coreml",
        extra="coreml",
        target="coreml",
        requires="coremltools",
        predicts_on=("Darwin",),
        auto=(("darwin", 0),),
    ),
    Backend("torch", "nitro_edge.runtimes.torch", extra="torch", target=None, requires="torch"),
)


def target(name: str) -> Target:
    for t in TARGETS:
        if t.name == name:
            return t
    raise InputError(f"target must be one of {[t.name for t in TARGETS]}, got {name!r}")


def backend(name: str) -> Backend:
    for b in BACKENDS:
        if b.name == name:
            return b
    raise InputError(f"backend must be 'auto' or one of {sorted(b.name for b in BACKENDS)}, got {name!r}")


def backend_for_target(name: str) -> Backend:
    """The backend that reads `name` artifacts (the export gate runs them with it)."""
    for b in BACKENDS:
        if b.target == name:
            return b
    raise InputError(f"no backend reads {name!r} artifacts")


def host_tags() -> tuple[str, ...]:
    """What the auto order looks at, most specific first."""
    tags = []
    if platform.system() == "Darwin":
        tags.append("darwin")
    if _intel_cpu():
        tags.append("intel")
    return (*tags, "*")


def _intel_cpu() -> bool:
    try:
        return "GenuineIntel" in Path("/proc/cpuinfo").read_text(errors="replace")[:4096]
    except OSError:
        return "intel" in platform.processor().lower()


def auto_order(tags: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """Backends to try, best first, for this host (or `tags`): Core ML on macOS, OpenVINO on Intel
    CPUs, ONNX Runtime elsewhere; from each record's `auto` ranks."""
    tags = host_tags() if tags is None else tags
    ranked = []
    for i, b in enumerate(BACKENDS):
        ranks = dict(b.auto)
        rank = next((ranks[t] for t in tags if t in ranks), None)
        if rank is not None:
            ranked.append((rank, i, b.name))
    return tuple(name for _, _, name in sorted(ranked))
