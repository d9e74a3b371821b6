"""export_bundle: a source in, a verified bundle out. Everything is written aside and moved
into place only after every artifact passed its parity gate."""

from __future__ import annotations

import datetime as dt
import functools
import gc
import importlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

import nitro_edge
from nitro_edge.bundle import MANIFEST, SCHEMA, SCHEMA_VERSION, Bundle, file_entries, is_bundle
from nitro_edge.errors import BundleError, InputError, ParityError
from nitro_edge.export.component import ComponentSource
from nitro_edge.export.parity import compare_component, compare_images
from nitro_edge.sampler import Sampler, initial_noise
from nitro_edge.sources import Source, resolve_source
from nitro_edge.specs import COMPONENTS, FLOORS, component_specs

log = logging.getLogger(__name__)
TARGETS = ("onnx", "openvino", "coreml")
PARITY_PROMPTS = ("a red circle at the top left", "a photograph of an astronaut riding a horse")
CALIBRATION_PROMPTS = (
    "a red circle at the top left", "a blue square in the centre", "a portrait photo of an old man",
    "a watercolour landscape with mountains", "a cat sitting on a sofa", "a city street at night, neon lights",
    "a bowl of fruit on a wooden table", "an astronaut riding a horse",
)
PARITY_SEED = 0


def target_precisions(target: str) -> tuple[str, ...]:
    return importlib.import_module(f"nitro_edge.export.{target}").PRECISIONS


def export_bundle(
    source: str | Path,
    out: str | Path,
    *,
    targets: Sequence[str] = ("onnx",),
    precision: str = "fp32",
    height: int | None = None,
    width: int | None = None,
    unet: str | Path | None = None,
    shift: int | None = None,
    tiny_vae: str | Path | None = None,
    options: Mapping[str, Mapping[str, object]] | None = None,
    report: Callable[[str], None] = log.info,
) -> Path:
    """Export `source` to the bundle folder `out` for each target at `precision`; returns `out`.

    `options` maps a target to keyword arguments of its Options (e.g. {"coreml": {"chunks": 2}}).
    If `out` is already a bundle of the same model and settings, the new artifacts join it.
    Nothing appears at `out` unless every artifact passes its parity gate.
    """
    targets = list(targets)
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        raise InputError(f"targets must be among {TARGETS}, got {targets}")
    if precision not in FLOORS:
        raise InputError(f"precision must be one of {tuple(FLOORS)}, got {precision!r}")
    unsupported = [t for t in targets if precision not in target_precisions(t)]
    if unsupported:
        raise InputError(f"precision {precision} is not available for {unsupported}: "
                         + "; ".join(f"{t}: {', '.join(target_precisions(t))}" for t in unsupported))
    chosen = _target_options(targets, options or {})
    out = Path(out)
    existing = _existing_bundle(out)
    src = resolve_source(source, unet=unet, shift=shift, tiny_vae=tiny_vae)
    from nitro_edge.runtimes import torch as torch_rt

    report(f"loading {src.architecture} source {src.path}")
    dims, tokenizers, specs, examples, recorded, ref_images, calibration = _reference_run(src, height, width, precision)

    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(out, report)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    scratch = out.parent / f".{out.name}.scratch-{os.getpid()}"
    for path in (tmp, scratch):
        shutil.rmtree(path, ignore_errors=True)
    try:
        manifest = _start_manifest(existing, tmp, src, dims, tokenizers, specs)
        sources = {}
        # One component at a time, so that only it (and its trace) is in memory: the generator of a
        # large model must export in about twice its own size, not beside the whole pipeline.
        for name in COMPONENTS[dims.architecture]:
            component = ComponentSource(specs[name], functools.partial(torch_rt.load_module, src, name),
                                        _first(examples[name]), calibration.get(name, []), scratch)
            if "coreml" not in targets:  # the other targets start from the ONNX trace
                component.onnx_fp32()
                component.release()
            for target in targets:
                exporter = importlib.import_module(f"nitro_edge.export.{target}")
                started = time.perf_counter()
                report(f"{target} {precision}: exporting {name}")
                _record(manifest, tmp, name, target, precision, precision,
                        exporter.export(component, tmp / target / precision, precision, chosen[target]),
                        extra=chosen[target].facts(name))
                report(f"{target} {precision}: {name} written in {time.perf_counter() - started:.1f} s")
            component.release()
            sources[name] = component
        for target in targets:
            exporter = importlib.import_module(f"nitro_edge.export.{target}")
            manifest["parity"][f"{target}/{precision}"] = _gate(
                tmp, manifest, target, precision, recorded, examples, ref_images, sources, exporter,
                chosen[target], report)
        manifest["files"] = file_entries(tmp)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        Bundle.open(tmp)  # the bundle we are about to publish must read back
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report(f"bundle written: {out}")
    return out


def _remove_leftovers(out: Path, report) -> None:
    """Folders of an export of `out` that was killed (SIGKILL, the OOM killer, power loss) cannot
    clean up after themselves: remove those whose process is gone (a full-size one is gigabytes)."""
    for kind in ("partial", "scratch"):
        for path in out.parent.glob(f".{out.name}.{kind}-*"):
            pid = path.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True)
                report(f"removed {path.name}, left by an export that was killed")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _reference_run(src: Source, height, width, precision: str):
    """Everything the gate compares against, computed once in torch with the whole pipeline loaded;
    the modules are released before any conversion starts. Returns (dims, tokenizers, specs,
    component inputs, recorded component outputs, reference images, calibration inputs)."""
    from nitro_edge.runtimes import torch as torch_rt

    dims, tokenizers, modules = torch_rt.load_modules(src, height, width)
    specs = component_specs(dims)
    reference = {n: torch_rt.as_component(modules[n], specs[n]) for n in COMPONENTS[dims.architecture]}
    ref_sampler = Sampler(dims=dims, params=src.params, tokenizers=tokenizers, components=reference, backend="torch")
    examples = _component_inputs(ref_sampler, list(PARITY_PROMPTS))
    calibration = _calibration_inputs(ref_sampler) if precision == "int8-hybrid" else {}
    ref_images = ref_sampler.generate(list(PARITY_PROMPTS), steps=1, seed=PARITY_SEED, output="numpy")
    recorded = {n: _replay(reference[n](**examples[n])) for n in reference}
    del reference, ref_sampler, modules
    gc.collect()
    return dims, tokenizers, specs, examples, recorded, ref_images, calibration


def _replay(outputs: dict[str, np.ndarray]):
    """A component that gives the outputs torch gave on the parity inputs (the only inputs it gets)."""
    return lambda **arrays: outputs


def _target_options(targets: list[str], options: Mapping[str, Mapping[str, object]]) -> dict:
    """Each target's Options, built (and so validated) before any work starts."""
    stray = sorted(set(options) - set(targets))
    if stray:
        raise InputError(f"options given for targets {stray}, which this export does not write (targets: {targets})")
    chosen = {}
    for target in targets:
        cls = importlib.import_module(f"nitro_edge.export.{target}").Options
        given = dict(options.get(target, {}))
        known = set(cls.__dataclass_fields__)
        if set(given) - known:
            raise InputError(f"{target} options are {sorted(known) or 'none'}, got {sorted(set(given) - known)}")
        chosen[target] = cls(**given)
    return chosen


def _record(manifest, tmp: Path, name, target, precision, actual, files, reason=None, extra=None) -> None:
    roots = list(dict.fromkeys(_package_root(f, tmp).relative_to(tmp).as_posix() for f in files))
    roots = [r for r in roots if r.endswith(".mlpackage")] or roots[:1]
    entry = {"path": roots[0], "files": [f.relative_to(tmp).as_posix() for f in files], "precision": actual,
             **(extra or {})}
    if len(roots) > 1:
        entry["chunks"] = roots  # packages run in this order, each feeding the next
    if reason:
        entry["fallback_reason"] = reason
    manifest["components"][name].setdefault("artifacts", {}).setdefault(target, {})[precision] = entry


def _package_root(first: Path, tmp: Path) -> Path:
    """The path a runtime opens: the file itself, or the .mlpackage folder that holds it."""
    for parent in [first, *first.parents]:
        if parent.suffix == ".mlpackage":
            return parent
        if parent == tmp:
            break
    return first


def _existing_bundle(out: Path) -> Bundle | None:
    if not out.exists():
        return None
    if is_bundle(out):
        return Bundle.open(out)
    if out.is_dir() and not any(out.iterdir()):
        return None
    raise BundleError(f"output {out} exists and is not a bundle; choose a new folder or remove it")


def _start_manifest(existing, tmp: Path, src: Source, dims, tokenizers, specs) -> dict:
    """A manifest for this export: a copy of the existing bundle's, or a new one."""
    if existing is not None:
        same_decoder = existing.manifest.get("provenance", {}).get("source", {}).get("tiny_vae") == src.describe()["tiny_vae"]
        if existing.dims != dims or existing.params != src.params or not same_decoder:
            raise BundleError(
                f"{existing.root} was exported with other settings (size, sampler or decoder); export into a new folder"
            )
        shutil.copytree(existing.root, tmp)
        (tmp / MANIFEST).unlink()
        manifest = existing.manifest
        manifest.setdefault("parity", {})
        return manifest
    tmp.mkdir(parents=True)
    token_entries = []
    for i, tok in enumerate(tokenizers):
        rel = f"tokenizer{'' if i == 0 else f'_{i + 1}'}/tokenizer.json"
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        tok.save(tmp / rel)
        token_entries.append({"file": rel, "max_length": tok.info.max_length, "pad_token_id": tok.info.pad_token_id})
    sampler = src.params.to_dict()
    sampler["shift_source"] = src.shift_source
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "nitro_edge_version": nitro_edge.__version__,
        "architecture": dims.architecture,
        "dims": dims.to_dict(),
        "sampler": sampler,
        "tokenizers": token_entries,
        "components": {n: s.to_dict() for n, s in specs.items()},
        "parity": {},
        "provenance": {
            "source": src.describe(),
            "licence": src.licence,
            "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        },
        "files": {},
    }


def _component_inputs(sampler: Sampler, prompts: list[str], seed: int = PARITY_SEED, step: int = 0,
                      steps: int = 1) -> dict[str, dict[str, np.ndarray]]:
    """Real inputs of each component for `prompts` at one step of a torch sampling run."""
    ids = [tok(prompts) for tok in sampler.tokenizers]
    inputs = {"text_encoder": {"input_ids": ids[0]}}
    if len(ids) > 1:
        inputs["text_encoder_2"] = {"input_ids": ids[1]}
    cond = sampler.encode(prompts)
    _, sample = initial_noise(seed, (len(prompts), *sampler.dims.latent_shape))
    t = sampler.params.generator_timesteps(steps)[step]
    inputs["generator"] = {"sample": sample, "timestep": np.full((len(prompts),), t, dtype=np.int64), **cond}
    inputs["vae_decoder"] = {"latents": sampler.components["generator"](**inputs["generator"])["denoised"]}
    return inputs


def _calibration_inputs(sampler: Sampler) -> dict[str, list[dict[str, np.ndarray]]]:
    """Batch-1 inputs from the calibration prompts, at every timestep of a 2-step run."""
    out: dict[str, list] = {}
    for i, prompt in enumerate(CALIBRATION_PROMPTS):
        for step in (0, 1):
            for name, arrays in _component_inputs(sampler, [prompt], seed=i, step=step, steps=2).items():
                out.setdefault(name, []).append(arrays)
    return out


def _first(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Batch 1 of each array: the example to trace (the batch axis is exported as dynamic)."""
    return {k: v[:1] for k, v in arrays.items()}


def _gate(tmp, manifest, target, precision, reference, examples, ref_images, sources, exporter, options,
          report) -> dict:
    """Load the new artifacts with their runtime and hold them against torch. A component that
    fails at fp16 (overflow: NaN, Inf, collapsed SNR) is re-exported at fp32 and recorded so."""
    runtime = importlib.import_module(f"nitro_edge.runtimes.{target}")
    bundle = _draft(tmp, manifest)
    if target == "coreml" and not runtime.available():
        spec_report = runtime.check_spec(bundle, precision)
        report(f"coreml {precision}: spec checked (names, shapes, dtypes, weights); numeric parity NOT run "
               "(Core ML predicts on macOS only)")
        return {"numeric": False, "reason": "Core ML prediction needs macOS; the spec was checked", "spec": spec_report}
    candidate = _on_demand(runtime, bundle, precision)
    errors = {}
    for name in list(sources):
        try:
            errors[name] = compare_component(name, reference[name], candidate[name], examples[name], precision)
        except ParityError as exc:
            if precision != "fp16":
                raise
            report(f"{target} fp16: {name} fails parity ({exc}); keeping it in fp32")
            _record(manifest, tmp, name, target, precision, "fp32",
                    exporter.export(sources[name], tmp / target / precision, "fp32", options), reason=str(exc),
                    extra=options.facts(name))
            bundle = _draft(tmp, manifest)
            candidate = _on_demand(runtime, bundle, precision)
            errors[name] = compare_component(name, reference[name], candidate[name], examples[name], "fp32")
    variants = {}
    for label, kwargs in options.gate_variants().items():
        other = _on_demand(runtime, bundle, precision, **kwargs)
        variants[label] = {name: compare_component(name, reference[name], other[name], examples[name],
                                                   bundle.artifact(name, target, precision)["precision"])
                           for name in sources}
        report(f"{target} {precision}: {label} passed parity")
    sampler = Sampler(dims=bundle.dims, params=bundle.params, tokenizers=bundle.tokenizers(),
                      components=candidate, backend=target)
    images = sampler.generate(list(PARITY_PROMPTS), steps=1, seed=PARITY_SEED, output="numpy")
    psnr = compare_images(ref_images, images, precision, f"{target} {precision}")
    worst = min(e["snr_db"] for e in errors.values())
    report(f"{target} {precision}: parity passed, end-to-end {psnr:.1f} dB, worst component SNR {worst:.1f} dB")
    floor = FLOORS[precision]
    return {
        "numeric": True,
        "components": errors,
        "end_to_end_psnr_db": round(psnr, 2),
        "floor": {"psnr_db": floor.psnr_db, "component_snr_db": floor.component_snr_db,
                  "component_max_abs": None if floor.component_max_abs == float("inf") else floor.component_max_abs},
        **({"variants": variants} if variants else {}),
        "prompts": list(PARITY_PROMPTS),
        "seed": PARITY_SEED,
        "steps": 1,
    }


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


def _draft(tmp: Path, manifest: dict) -> Bundle:
    bundle = Bundle(tmp, {**manifest, "files": file_entries(tmp)})
    bundle.validate()
    return bundle


def _move_into_place(tmp: Path, out: Path) -> None:
    """Publish `tmp` as `out`; an existing bundle at `out` is replaced only after the move succeeds."""
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
