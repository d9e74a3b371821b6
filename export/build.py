"""export_bundle: a source in, a verified bundle out. Everything is written aside and moved
into place only after every artifact passed its parity gate.

The steps, in order: check the arguments; record the torch reference (export/reference.py); for
each component, load it alone and convert it to every target; for each target, run the parity gate
(export/gate.py); write the manifest with every file's checksum; move the bundle into place."""

from __future__ import annotations

import datetime as dt
import functools
import importlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import nitro_edge
from nitro_edge import registry
from nitro_edge.bundle import MANIFEST, SCHEMA, SCHEMA_VERSION, Bundle, file_entries, is_bundle
from nitro_edge.errors import BundleError, InputError
from nitro_edge.export.component import ComponentSource, load_for_export
from nitro_edge.export.gate import Draft, run_gate
from nitro_edge.export.reference import Reference, reference_run
from nitro_edge.sources import Source, resolve_source
from nitro_edge.specs import COMPONENTS, FLOORS

log = logging.getLogger(__name__)
TARGETS = tuple(t.name for t in registry.TARGETS)


def target_precisions(target: str) -> tuple[str, ...]:
    return registry.target(target).precisions


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
    loras: Sequence = (),
    prediction_type: str | None = None,
    options: Mapping[str, Mapping[str, object]] | None = None,
    report: Callable[[str], None] = log.info,
) -> Path:
    """Export `source` to the bundle folder `out` for each target at `precision`; returns `out`.

    `loras` are LoRA files ("FILE[:SCALE]" or nitro_edge.models.lora.Lora) merged into the text
    encoder(s) and the generator before conversion; the manifest records each (name, sha256, scale).
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
        raise InputError(
            f"precision {precision} is not available for {unsupported}: "
            + "; ".join(f"{t}: {', '.join(target_precisions(t))}" for t in unsupported)
        )
    chosen = _target_options(targets, options or {})
    out = Path(out)
    existing = _existing_bundle(out)
    src = resolve_source(
        source, unet=unet, shift=shift, tiny_vae=tiny_vae, loras=loras, prediction_type=prediction_type
    )
    started = time.perf_counter()
    report(f"torch reference: running the {src.architecture} pipeline from {src.path} …")
    reference = reference_run(src, height, width, precision)
    report(f"torch reference: recorded in {time.perf_counter() - started:.1f} s")

    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(out, report)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    scratch = out.parent / f".{out.name}.scratch-{os.getpid()}"
    for path in (tmp, scratch):
        shutil.rmtree(path, ignore_errors=True)
    try:
        draft = Draft(tmp, _start_manifest(existing, tmp, src, reference))
        sources = {}
        # 1. Convert, one component at a time, so that only it (and its trace) is in memory: the
        # generator of a large model must export in about twice its own size, not beside the pipeline.
        for name in COMPONENTS[reference.dims.architecture]:
            component = ComponentSource(
                reference.specs[name],
                functools.partial(load_for_export, src, name),
                reference.example(name),
                reference.calibration.get(name, []),
                scratch,
            )
            if "coreml" not in targets:  # the other targets start from the ONNX trace
                started = time.perf_counter()
                report(f"{name}: tracing …")
                component.onnx_fp32()
                component.release()
                report(f"{name}: traced in {time.perf_counter() - started:.1f} s")
            for target in targets:
                _convert(draft, component, target, precision, precision, chosen[target], report)
            component.release()
            sources[name] = component
        # 2. The gate, per target; an fp16 component that overflows is converted again at fp32.
        for target in targets:

            def refallback(name: str, reason: str, target=target) -> None:
                _convert(draft, sources[name], target, precision, "fp32", chosen[target], report, reason)

            result = run_gate(draft, target, precision, reference, refallback, chosen[target], report)
            draft.manifest["parity"][f"{target}/{precision}"] = result.to_manifest()
        # 3. Publish: checksums, a manifest that reads back, then one rename.
        draft.manifest["files"] = file_entries(tmp)
        (tmp / MANIFEST).write_text(json.dumps(draft.manifest, indent=2))
        Bundle.open(tmp)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report(f"bundle written: {out}")
    return out


def _convert(
    draft: Draft,
    component: ComponentSource,
    target: str,
    precision: str,
    actual: str,
    options,
    report,
    reason: str | None = None,
) -> None:
    """Write `component` as a `target` artifact under the `precision` folder, converted at `actual`
    (fp32 for an fp16 fallback), and record it in the draft's manifest."""
    exporter = importlib.import_module(registry.target(target).module)
    started = time.perf_counter()
    verb = "quantising" if actual.startswith("int8") else "palettising" if actual.startswith("pal") else "converting"
    report(f"{component.name}: {verb} for {target} {actual} …")
    files = exporter.export(component, draft.root / target / precision, actual, options)
    _record(
        draft.manifest,
        draft.root,
        component.name,
        target,
        precision,
        actual,
        files,
        reason,
        extra=options.facts(component.name),
    )
    report(f"{component.name}: {target} {actual} written in {time.perf_counter() - started:.1f} s")


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


def _target_options(targets: list[str], options: Mapping[str, Mapping[str, object]]) -> dict:
    """Each target's Options, built (and so validated) before any work starts."""
    stray = sorted(set(options) - set(targets))
    if stray:
        raise InputError(f"options given for targets {stray}, which this export does not write (targets: {targets})")
    chosen = {}
    for target in targets:
        cls = importlib.import_module(registry.target(target).module).Options
        given = dict(options.get(target, {}))
        known = set(cls.__dataclass_fields__)
        if set(given) - known:
            raise InputError(f"{target} options are {sorted(known) or 'none'}, got {sorted(set(given) - known)}")
        chosen[target] = cls(**given)
    return chosen


def _record(manifest, tmp: Path, name, target, precision, actual, files, reason=None, extra=None) -> None:
    roots = list(dict.fromkeys(_package_root(f, tmp).relative_to(tmp).as_posix() for f in files))
    roots = [r for r in roots if r.endswith(".mlpackage")] or roots[:1]
    entry = {
        "path": roots[0],
        "files": [f.relative_to(tmp).as_posix() for f in files],
        "precision": actual,
        **(extra or {}),
    }
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


def _start_manifest(existing, tmp: Path, src: Source, reference: Reference) -> dict:
    """A manifest for this export: a copy of the existing bundle's, or a new one."""
    dims, tokenizers, specs = reference.dims, reference.tokenizers, reference.specs
    if existing is not None:
        before = existing.manifest.get("provenance", {}).get("source", {})
        same_decoder = before.get("tiny_vae") == src.describe()["tiny_vae"]
        same_loras = before.get("loras", []) == src.describe()["loras"]
        if existing.dims != dims or existing.params != src.params or not same_decoder or not same_loras:
            raise BundleError(
                f"{existing.root} was exported with other settings (size, sampler, decoder or LoRAs); "
                "export into a new folder"
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


def _move_into_place(tmp: Path, out: Path) -> None:
    """Publish `tmp` as `out`; an existing bundle at `out` is replaced only after the move succeeds."""
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
