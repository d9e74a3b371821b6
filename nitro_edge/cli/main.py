"""Entry point: `nitro-edge export | generate | info`. A user mistake prints one line, exits 2."""

from __future__ import annotations

import enum
import logging
import os
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from nitro_edge import registry
from nitro_edge.errors import InputError, NitroEdgeError
from nitro_edge.specs import PRECISIONS

app = typer.Typer(add_completion=False, no_args_is_help=True, help="One-step text-to-image on device.")


def _choices(name: str, values) -> type[enum.Enum]:
    """A str enum of `values` (typer shows and checks them); every list comes from the registry."""
    return enum.Enum(name, {v.replace("-", "_"): v for v in values}, type=str)


Target = _choices("Target", [t.name for t in registry.TARGETS] + ["all"])
Precision = _choices("Precision", PRECISIONS)
Backend = _choices("Backend", ["auto"] + [b.name for b in registry.BACKENDS])
BenchBackend = _choices("BenchBackend", ["all"] + [b.name for b in registry.BACKENDS if b.target])
_coreml = registry.target("coreml").options
CoremlTarget = _choices("CoremlTarget", _coreml["deployment_target"])
ComputeUnits = _choices("ComputeUnits", _coreml["compute_units"])
Attention = _choices("Attention", _coreml["attention"])
PredictionType = _choices("PredictionType", ["epsilon", "v_prediction"])
Memory = _choices("Memory", ["normal", "low"])


def _console():
    from rich.console import Console

    return Console(stderr=True, log_path=False)


@app.command()
def export(
    source: Path = typer.Argument(
        ..., help="diffusers pipeline folder or single-file .safetensors (SD1.5, SD2.1, SDXL)"
    ),
    output: Path = typer.Option(..., "-o", "--output", help="bundle folder to write"),
    target: Target = typer.Option(Target.onnx, "--target", help="artifact format"),
    precision: Precision = typer.Option(Precision.fp32, "--precision"),
    height: Optional[int] = typer.Option(None, "--height", help="image height (default: the model's)"),
    width: Optional[int] = typer.Option(None, "--width", help="image width (default: the model's)"),
    unet: Optional[Path] = typer.Option(None, "--unet", help="UNet .safetensors replacing the source's"),
    shift: Optional[int] = typer.Option(None, "--shift", help="timestep shift (NitroSD: 250 Realism, 500 Vibrant)"),
    tiny_vae: Optional[Path] = typer.Option(None, "--tiny-vae", help="AutoencoderTiny (TAESD) folder as vae_decoder"),
    lora: list[str] = typer.Option(
        [],
        "--lora",
        help="LoRA .safetensors (diffusers/PEFT or kohya), FILE[:SCALE], merged before conversion; repeatable",
    ),
    prediction_type: Optional[PredictionType] = typer.Option(
        None, "--prediction-type", help="single-file SD2.x checkpoints: epsilon (512² models) or v_prediction (768²)"
    ),
    onnx_optimize: bool = typer.Option(
        False, "--onnx-optimize", help="onnx: fuse attention and LayerNorm (ONNX Runtime's optimiser)"
    ),
    ort_format: bool = typer.Option(False, "--ort-format", help="onnx: also write .ort files (ONNX Runtime Mobile)"),
    coreml_target: Optional[CoremlTarget] = typer.Option(
        None, "--coreml-target", help="coreml: minimum deployment target [default: macOS14]"
    ),
    compute_units: Optional[ComputeUnits] = typer.Option(
        None, "--compute-units", help="coreml: compute units to record [default: ALL]"
    ),
    attention: Optional[Attention] = typer.Option(
        None, "--attention", help="coreml: generator attention [default: original]"
    ),
    chunks: Optional[int] = typer.Option(
        None, "--chunks", help="coreml: generator as 1 package or 2 chunks [default: 1]"
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="show the converters' own output too"),
) -> None:
    """Export SOURCE to a bundle; it is moved into place only after its parity check passes."""
    from nitro_edge.export import export_bundle

    targets = (
        [target.value]
        if target.value != "all"
        else [t.name for t in registry.TARGETS if precision.value in t.precisions]
    )
    given = {
        "onnx": {"optimize": onnx_optimize or None, "ort_format": ort_format or None},
        "coreml": {
            "deployment_target": coreml_target and coreml_target.value,
            "compute_units": compute_units and compute_units.value,
            "attention": attention and attention.value,
            "chunks": chunks,
        },
    }
    options = {t: {k: v for k, v in kw.items() if v is not None} for t, kw in given.items()}
    options = {t: kw for t, kw in options.items() if kw}
    stray = sorted(set(options) - set(targets))
    if stray:
        raise InputError(f"options for {stray} were given, but the export writes {targets}")

    from nitro_edge.cli.quiet import Phases, captured

    started = time.perf_counter()
    # The converters' own output (progress bars, tables, notices) goes to this file, kept on failure.
    log = output.parent / f".{output.name}.export.log"
    log.unlink(missing_ok=True)
    try:
        with captured(log, verbose) as console, Phases(console) as phases:
            export_bundle(
                source,
                output,
                targets=targets,
                precision=precision.value,
                height=height,
                width=width,
                unet=unet,
                shift=shift,
                tiny_vae=tiny_vae,
                loras=lora,
                prediction_type=prediction_type and prediction_type.value,
                options=options,
                report=phases,
            )
            console.print(f"[green]done[/green] in {time.perf_counter() - started:.1f} s: {output}")
    except NitroEdgeError as exc:
        if log.is_file() and log.stat().st_size:
            raise type(exc)(f"{exc} (the converters' output is in {log})") from exc
        log.unlink(missing_ok=True)
        raise
    except KeyboardInterrupt:  # the user stopped it: nothing to read, nothing left behind
        log.unlink(missing_ok=True)
        raise
    log.unlink(missing_ok=True)


@app.command()
def generate(
    prompt: str = typer.Argument(..., help="what to draw"),
    model: Optional[Path] = typer.Option(
        None, "-m", "--model", help="bundle, or diffusers source folder (torch backend); default: the embedded model"
    ),
    output: Path = typer.Option(Path("out.png"), "-o", "--output", help="PNG to write (batch > 1: name-0.png, ...)"),
    steps: int = typer.Option(1, "--steps", help="1 to 4"),
    seed: int = typer.Option(0, "--seed"),
    backend: Backend = typer.Option(Backend.auto, "--backend"),
    precision: Optional[Precision] = typer.Option(
        None, "--precision", help="bundle artifacts to run [default: the most exact the bundle holds]"
    ),
    batch: int = typer.Option(1, "--batch", help="images of this prompt in one batch"),
    height: Optional[int] = typer.Option(None, "--height", help="source folders only"),
    width: Optional[int] = typer.Option(None, "--width", help="source folders only"),
    unet: Optional[Path] = typer.Option(None, "--unet", help="source folders only"),
    shift: Optional[int] = typer.Option(None, "--shift", help="source folders only"),
    lora: list[str] = typer.Option([], "--lora", help="source folders only: LoRA FILE[:SCALE], repeatable"),
    prediction_type: Optional[PredictionType] = typer.Option(
        None, "--prediction-type", help="single-file SD2.x checkpoints: epsilon or v_prediction"
    ),
    memory: Memory = typer.Option(
        Memory("normal"), "--memory", help="low: load each component when needed and release it (less RSS, slower)"
    ),
) -> None:
    """Generate images for PROMPT with a bundle or a source folder."""
    import nitro_edge

    if batch < 1:
        raise InputError(f"--batch must be at least 1, got {batch}")
    if output.suffix.lower() != ".png":
        raise InputError(f"--output must end in .png, got {output}")
    console = _console()
    if model is None:
        from nitro_edge.default_model import NAME, default_bundle

        with console.status("opening the embedded default model"):
            model = default_bundle()
        console.print(f"model: embedded default {NAME} ({model})")
    with console.status("loading"):
        sampler = nitro_edge.load(
            model,
            backend.value,
            precision=precision and precision.value,
            unet=unet,
            shift=shift,
            height=height,
            width=width,
            loras=lora,
            prediction_type=prediction_type and prediction_type.value,
            memory=memory.value,
        )
    started = time.perf_counter()
    with console.status(f"generating on {sampler.backend} {sampler.precision}"):
        images = sampler.generate([prompt] * batch, steps=steps, seed=seed)
    elapsed = time.perf_counter() - started
    paths = [output] if batch == 1 else [output.with_name(f"{output.stem}-{i}.png") for i in range(batch)]
    output.parent.mkdir(parents=True, exist_ok=True)
    for image, path in zip(images, paths):
        image.save(path)
    ran = f"{sampler.backend} {sampler.precision}" + (f" ({sampler.compute} compute)" if sampler.compute else "")
    console.print(f"{len(paths)} image(s) on {ran} in {elapsed:.2f} s: {', '.join(map(str, paths))}")


@app.command()
def info(
    bundle: Path = typer.Argument(..., help="bundle folder"),
    as_json: bool = typer.Option(False, "--json", help="print the manifest as JSON"),
) -> None:
    """Describe a bundle: model, sampler, artifacts, parity, provenance."""
    import importlib.util
    import json

    from nitro_edge.bundle import Bundle

    b = Bundle.open(bundle)
    m = b.manifest
    if as_json:
        typer.echo(json.dumps(m, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    s = m["sampler"]
    console.print(
        f"[bold]{bundle}[/bold]: {m['architecture']}, {b.dims.height}x{b.dims.width}, "
        f"shift {s['shift']} ({s.get('shift_source', '?')}), nitro-edge {m.get('nitro_edge_version')}"
    )
    prov = m.get("provenance", {})
    console.print(f"source: {prov.get('source', {}).get('path')}  licence: {prov.get('licence') or 'unknown'}")
    table = Table("component", "target", "precision", "file", "MB")
    for name, comp in m["components"].items():
        for target, by_precision in comp.get("artifacts", {}).items():
            for precision, art in by_precision.items():
                size = sum(m["files"][f]["bytes"] for f in art["files"])
                used = art.get("precision", precision)
                table.add_row(
                    name,
                    target,
                    precision if used == precision else f"{precision} (kept {used})",
                    art["path"],
                    f"{size / 1e6:.1f}",
                )
    console.print(table)
    for key, parity in m.get("parity", {}).items():
        if not parity.get("numeric", True):
            console.print(f"parity {key}: numeric check not run ({parity.get('reason')})")
            continue
        comps = parity["components"]
        console.print(
            f"parity {key}: end-to-end {parity['end_to_end_psnr_db']} dB "
            f"(floor {parity['floor']['psnr_db']}), worst component SNR "
            f"{min(c['snr_db'] for c in comps.values())} dB, max abs {max(c['max_abs'] for c in comps.values()):.2e}"
        )
        for label, variant in parity.get("variants", {}).items():
            how = f" ({variant['inference_precision']} compute)" if variant.get("inference_precision") else ""
            verdict = (
                f"{variant['end_to_end_psnr_db']} dB end to end (floor of {variant['floor']})"
                if variant.get("passed", True)
                else f"not passing: {variant.get('reason')}"
            )
            console.print(f"  {label}{how}: {verdict}")
    if "openvino" in b.targets() and importlib.util.find_spec("openvino"):
        from nitro_edge.runtimes.openvino import compute_precision

        for precision in b.targets()["openvino"]:
            console.print(f"openvino {precision} computes in {compute_precision(b, precision)} here (by default)")


@app.command()
def bench(
    bundle: Path = typer.Argument(..., help="bundle folder"),
    backend: BenchBackend = typer.Option(BenchBackend("all"), "--backend", help="a backend, or all"),
    runs: int = typer.Option(5, "--runs", help="warm runs per backend and precision"),
    steps: int = typer.Option(1, "--steps"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="write the results as JSON"),
    plot_path: Optional[Path] = typer.Option(None, "--plot", help="write a PNG chart"),
    memory: Memory = typer.Option(Memory("normal"), "--memory", help="low: each component loaded when needed"),
) -> None:
    """Latency (cold and warm, per component and end to end), peak RSS and size, per backend and precision."""
    import json

    from nitro_edge.bench import plot, run_all

    if runs < 1:
        raise InputError(f"--runs must be at least 1, got {runs}")
    backends = [b.name for b in registry.BACKENDS if b.target] if backend.value == "all" else [backend.value]
    console = _console()
    results, problems = run_all(str(bundle), backends, runs, steps, report=console.log, memory=memory.value)
    failed = [p for p in problems if p["status"] == "failed"]
    if not results:
        reasons = "; ".join(f"{p['backend']} {p['precision']}: {p['status']}, {p['reason']}" for p in problems)
        raise InputError(f"no backend could run {bundle} here" + (f" ({reasons})" if reasons else ""))
    from rich.table import Table

    table = Table(
        "backend",
        "precision",
        "cold start s",
        "end-to-end s (median [min-max])",
        "slowest component",
        "peak RSS MiB",
        "size MiB",
    )
    for r in results:
        e = r["end_to_end_s"]
        slow = max(r["components_s"].items(), key=lambda kv: kv[1]["median"])
        table.add_row(
            r["backend"],
            r["precision"],
            f"{r['cold_start_s']:.2f}",
            f"{e['median']:.3f} [{e['min']:.3f}-{e['max']:.3f}]",
            f"{slow[0]} {slow[1]['median']:.3f}",
            f"{r['peak_rss_mib']:.0f}",
            f"{r['size_mib']}",
        )
    from rich.console import Console

    Console().print(table)
    if json_path:
        json_path.write_text(json.dumps(results, indent=2))
    if plot_path:
        plot(results, plot_path)
    if failed:  # the others' results are printed and written; the exit status says not all ran
        typer.echo(
            "error: these runs failed: "
            + "; ".join(f"{p['backend']} {p['precision']} ({p['reason']})" for p in failed),
            err=True,
        )
        raise typer.Exit(code=1)


@app.command()
def train(
    config: Optional[Path] = typer.Argument(None, help="YAML config (keys of TrainConfig)"),
    teacher: Optional[Path] = typer.Option(None, "--teacher", help="diffusers teacher pipeline folder"),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help=".txt, folder of .txt, .jsonl or .parquet"),
    output: Optional[Path] = typer.Option(None, "--output", help="run folder (re-running resumes it)"),
    max_steps: Optional[int] = typer.Option(None, "--max-steps"),
    set_: list[str] = typer.Option([], "--set", help="override a config key: --set key=value"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan and exit"),
    precompute: int = typer.Option(0, "--precompute", help="fill teacher_cache with N teacher samples and exit"),
) -> None:
    """Distil a one-step student from TEACHER with NitroFusion's dynamic adversarial training."""
    import json

    from nitro_edge._lazy import require
    from nitro_edge.training.config import load_config

    overrides = {"teacher": teacher, "prompts": prompts, "output": output, "max_steps": max_steps}
    cfg = load_config(config, {k: str(v) if isinstance(v, Path) else v for k, v in overrides.items()}, set_)
    for module in ("torch", "diffusers", "accelerate"):  # a missing one: one line naming the extra
        require(module, "train")
    if dry_run:
        from nitro_edge.training.plan import plan

        typer.echo(json.dumps(plan(cfg), indent=2))
        return
    cfg.validate()
    if precompute:
        from nitro_edge.training.plan import precompute as fill

        fill(cfg, precompute, progress=lambda done, total: _console().log(f"teacher cache: {done}/{total}"))
        return
    from nitro_edge.training.train import train as run

    student = run(cfg)
    if os.environ.get("RANK", "0") == "0":
        _console().print(f"student pipeline: {student} (export it with `nitro-edge export {student} -o BUNDLE`)")


def main() -> None:
    """Console entry point: configure logging, run, and turn our errors into one line."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    # diffusers and transformers log import-time notes on their own handlers (for example
    # "Multiple distributions found for package optimum" when optimum-intel is installed); the CLI
    # shows our messages only, unless the user asks for theirs.
    for library in ("DIFFUSERS_VERBOSITY", "TRANSFORMERS_VERBOSITY"):
        os.environ.setdefault(library, "error")
    try:
        app()  # typer reports its own usage errors (exit 2); ours arrive here
    except NitroEdgeError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
