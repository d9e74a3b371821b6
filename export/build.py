"""export_bundle: a source in, a verified bundle out, written aside and moved into place only
after every artifact passed its parity check."""

from __future__ import annotations

import datetime as dt
import importlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

import nitro_edge
from nitro_edge.bundle import MANIFEST, SCHEMA, SCHEMA_VERSION, Bundle, file_entries, is_bundle
from nitro_edge.errors import BundleError, InputError
from nitro_edge.export.parity import compare_components, compare_images
from nitro_edge.sampler import Sampler, initial_noise
from nitro_edge.sources import Source, resolve_source
from nitro_edge.specs import COMPONENTS, FLOORS, component_specs

log = logging.getLogger(__name__)
TARGETS = ("onnx",)
PARITY_PROMPTS = ("a red circle at the top left", "a photograph of an astronaut riding a horse")
PARITY_SEED = 0


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
    report: Callable[[str], None] = log.info,
) -> Path:
    """Export `source` to the bundle folder `out` for each target at `precision`; returns `out`.

    If `out` is already a bundle of the same model and settings, the new artifacts are added to it.
    Nothing appears at `out` unless every artifact passes its parity gate.
    """
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        raise InputError(f"targets must be among {TARGETS}, got {list(targets)}")
    if precision not in FLOORS:
        raise InputError(f"precision must be one of {tuple(FLOORS)}, got {precision!r}")
    out = Path(out)
    existing = _existing_bundle(out)
    src = resolve_source(source, unet=unet, shift=shift)
    from nitro_edge.runtimes import torch as torch_rt

    report(f"loading {src.architecture} source {src.path}")
    dims, tokenizers, modules = torch_rt.load_modules(src, height, width)
    specs = component_specs(dims)
    reference = {n: torch_rt.as_component(modules[n], specs[n]) for n in COMPONENTS[dims.architecture]}
    ref_sampler = Sampler(dims=dims, params=src.params, tokenizers=tokenizers, components=reference, backend="torch")
    examples = _component_inputs(ref_sampler)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        manifest = _start_manifest(existing, tmp, src, dims, tokenizers, specs)
        ref_images = ref_sampler.generate(list(PARITY_PROMPTS), steps=1, seed=PARITY_SEED, output="numpy")
        for target in targets:
            exporter = importlib.import_module(f"nitro_edge.export.{target}")
            folder = tmp / target / precision
            for name in COMPONENTS[dims.architecture]:
                started = time.perf_counter()
                report(f"{target} {precision}: exporting {name}")
                files = exporter.export(modules[name], specs[name], _first(examples[name]), folder, precision)
                manifest["components"][name].setdefault("artifacts", {}).setdefault(target, {})[precision] = {
                    "file": files[0].relative_to(tmp).as_posix(),
                    "external_data": [f.relative_to(tmp).as_posix() for f in files[1:]],
                }
                report(f"{target} {precision}: {name} written in {time.perf_counter() - started:.1f} s")
            manifest["parity"][f"{target}/{precision}"] = _gate(
                tmp, manifest, target, precision, reference, examples, ref_images, report
            )
        manifest["files"] = file_entries(tmp)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        Bundle.open(tmp)  # the bundle we are about to publish must read back
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report(f"bundle written: {out}")
    return out


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
        same = (existing.dims == dims, existing.params == src.params)
        if not all(same):
            raise BundleError(
                f"{existing.root} was exported with other settings (dims or sampler parameters); "
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
        tok._backend.save(str(tmp / rel))
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


def _component_inputs(sampler: Sampler) -> dict[str, dict[str, np.ndarray]]:
    """Real inputs for each component (batch 2) from a torch run of the parity prompts."""
    prompts = list(PARITY_PROMPTS)
    ids = [tok(prompts) for tok in sampler.tokenizers]
    inputs = {"text_encoder": {"input_ids": ids[0]}}
    if len(ids) > 1:
        inputs["text_encoder_2"] = {"input_ids": ids[1]}
    cond = sampler.encode(prompts)
    _, sample = initial_noise(PARITY_SEED, (len(prompts), *sampler.dims.latent_shape))
    t = sampler.params.generator_timesteps(1)[0]
    inputs["generator"] = {"sample": sample, "timestep": np.full((len(prompts),), t, dtype=np.int64), **cond}
    inputs["vae_decoder"] = {"latents": sampler.components["generator"](**inputs["generator"])["denoised"]}
    return inputs


def _first(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Batch 1 of each array: the example to trace (the batch axis is exported as dynamic)."""
    return {k: v[:1] for k, v in arrays.items()}


def _gate(tmp, manifest, target, precision, reference, examples, ref_images, report) -> dict:
    """Load the new artifacts with their runtime and hold them against torch."""
    bundle = Bundle(tmp, {**manifest, "files": file_entries(tmp)})
    bundle.validate()
    runtime = importlib.import_module(f"nitro_edge.runtimes.{target}")
    candidate = runtime.load(bundle, precision)
    errors = compare_components(reference, candidate, examples, precision)
    sampler = Sampler(dims=bundle.dims, params=bundle.params, tokenizers=bundle.tokenizers(),
                      components=candidate, backend=target)
    images = sampler.generate(list(PARITY_PROMPTS), steps=1, seed=PARITY_SEED, output="numpy")
    psnr = compare_images(ref_images, images, precision, f"{target} {precision}")
    report(f"{target} {precision}: parity passed, end-to-end {psnr:.1f} dB, worst component "
           f"max abs {max(errors.values()):.2e}")
    return {
        "component_max_abs": errors,
        "end_to_end_psnr_db": round(psnr, 2),
        "floor": {"component_max_abs": FLOORS[precision].component_max_abs, "psnr_db": FLOORS[precision].psnr_db},
        "prompts": list(PARITY_PROMPTS),
        "seed": PARITY_SEED,
        "steps": 1,
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
