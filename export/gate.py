"""The parity gate: for each target, every component's artifact against the torch reference, an
fp32 fallback for an fp16 component that overflows, then the whole pipeline end to end.

A target whose backend cannot predict on this platform (Core ML off macOS) gets its runtime's
check_spec() instead: names, shapes, dtypes and weight precision, recorded as `numeric: false`.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nitro_edge import registry
from nitro_edge.bundle import Bundle, file_entries
from nitro_edge.errors import ParityError
from nitro_edge.export.parity import compare_component, compare_images
from nitro_edge.export.reference import PARITY_PROMPTS, PARITY_SEED, Reference
from nitro_edge.sampler import Sampler
from nitro_edge.specs import FLOORS


@dataclass
class GateResult:
    """What the manifest records under parity["<target>/<precision>"]."""

    target: str
    precision: str
    numeric: bool
    components: dict[str, dict] = field(default_factory=dict)  # name -> {max_abs, snr_db}
    end_to_end_psnr_db: float | None = None
    variants: dict[str, dict] = field(default_factory=dict)  # other ways to open the artifacts
    spec: dict | None = None  # the spec check, when no numeric check can run here
    reason: str | None = None

    def to_manifest(self) -> dict:
        if not self.numeric:
            return {"numeric": False, "reason": self.reason, "spec": self.spec}
        floor = FLOORS[self.precision]
        return {
            "numeric": True,
            "components": self.components,
            "end_to_end_psnr_db": round(self.end_to_end_psnr_db, 2),
            "floor": {
                "psnr_db": floor.psnr_db,
                "component_snr_db": floor.component_snr_db,
                "component_max_abs": None if floor.component_max_abs == float("inf") else floor.component_max_abs,
            },
            **({"variants": self.variants} if self.variants else {}),
            "prompts": list(PARITY_PROMPTS),
            "seed": PARITY_SEED,
            "steps": 1,
        }


@dataclass
class Draft:
    """The bundle being written: its folder and manifest; `open()` reads it as a runtime would."""

    root: Path
    manifest: dict

    def open(self) -> Bundle:
        bundle = Bundle(self.root, {**self.manifest, "files": file_entries(self.root)})
        bundle.validate()
        return bundle


def run_gate(
    draft: Draft,
    target: str,
    precision: str,
    reference: Reference,
    refallback: Callable[[str, str], None],
    options,
    report: Callable[[str], None],
) -> GateResult:
    """Hold `target`'s artifacts at `precision` against `reference`. `refallback(name, reason)`
    re-exports one component at fp32 into the draft (the fp16 overflow fallback)."""
    backend = registry.backend_for_target(target)
    runtime = backend.load_module()
    if not backend.predicts_here():
        spec = runtime.check_spec(draft.open(), precision)
        report(
            f"warning: {target} {precision}: numeric parity NOT checked ({backend.name} predicts on "
            f"{backend.platforms} only); its spec was checked instead (names, shapes, dtypes, weights)"
        )
        return GateResult(
            target,
            precision,
            numeric=False,
            spec=spec,
            reason=f"{backend.name} prediction needs {backend.platforms}; the spec was checked",
        )
    result = GateResult(target, precision, numeric=True)
    started = time.perf_counter()
    report(f"{target} {precision}: checking parity against torch …")
    bundle = draft.open()
    for name in reference.specs:
        try:
            result.components[name] = _check(runtime, bundle, name, precision, reference, precision)
        except ParityError as exc:
            if precision != "fp16":
                raise
            # fp16 overflow (NaN, Inf, collapsed SNR): this component stays fp32, recorded so.
            report(f"warning: {target} fp16: {name} fails parity ({exc}); keeping it in fp32")
            refallback(name, str(exc))
            bundle = draft.open()
            result.components[name] = _check(runtime, bundle, name, precision, reference, "fp32")
    for label, variant in options.gate_variants(precision).items():
        result.variants[label] = _variant(runtime, bundle, target, precision, reference, label, variant, report)
    images = _images(runtime, bundle, target, precision, {})
    result.end_to_end_psnr_db = compare_images(reference.images, images, precision, f"{target} {precision}")
    worst = min(c["snr_db"] for c in result.components.values())
    report(
        f"{target} {precision}: parity passed, end-to-end {result.end_to_end_psnr_db:.1f} dB "
        f"(floor {FLOORS[precision].psnr_db:g}), worst component SNR {worst:.1f} dB, in "
        f"{time.perf_counter() - started:.1f} s"
    )
    return result


def _variant(
    runtime, bundle: Bundle, target: str, precision: str, reference: Reference, label: str, variant, report
) -> dict:
    """One variant per component and end to end at its floor; a failing optional one is recorded so."""
    floor = variant.floor or precision
    floors = {name: variant.floor or bundle.artifact(name, target, precision)["precision"] for name in reference.specs}
    try:
        checked = {
            name: _check(runtime, bundle, name, precision, reference, floors[name], **variant.options)
            for name in reference.specs
        }
        images = _images(runtime, bundle, target, precision, variant.options)
        psnr = compare_images(reference.images, images, floor, f"{target} {precision} ({label})")
    except ParityError as exc:
        if variant.required:
            raise
        report(f"{target} {precision}: {label} under its floor ({exc}); not used by default")
        return {"passed": False, "reason": str(exc), "floor": floor, **variant.facts}
    report(f"{target} {precision}: {label} passed parity, end-to-end {psnr:.1f} dB (floor {FLOORS[floor].psnr_db:g})")
    return {
        "passed": True,
        "components": checked,
        "end_to_end_psnr_db": round(psnr, 2),
        "floor": floor,
        **variant.facts,
    }


def _images(runtime, bundle: Bundle, target: str, precision: str, options: dict):
    """The parity prompts through the artifacts, one component in memory at a time."""
    sampler = Sampler(
        dims=bundle.dims,
        params=bundle.params,
        tokenizers=bundle.tokenizers(),
        components=_on_demand(runtime, bundle, precision, **options),
        backend=target,
    )
    return sampler.generate(list(PARITY_PROMPTS), steps=1, seed=PARITY_SEED, output="numpy")


def _check(runtime, bundle: Bundle, name: str, precision: str, reference: Reference, floor: str, **options) -> dict:
    """One component's artifact against torch's recorded outputs, at `floor`'s precision floor."""
    candidate = _on_demand(runtime, bundle, precision, **options)[name]
    return compare_component(name, reference.replay(name), candidate, reference.inputs[name], floor)


def _on_demand(runtime, bundle: Bundle, precision: str, **options) -> dict:
    """Components that load when called and are released after, so the gate holds one at a time
    (an SDXL pipeline's sessions together do not fit beside a 1024² run in 24 GiB)."""

    def component(name: str):
        def call(**arrays):
            loaded = runtime.load(bundle, precision, components=[name], **options)
            try:
                return loaded[name](**arrays)
            finally:
                del loaded
                gc.collect()

        return call

    return {name: component(name) for name in bundle.specs}
