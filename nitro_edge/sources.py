"""Recognise a model source without loading it: a diffusers SD1.5/SD2.1/SDXL pipeline folder,
optionally with a NitroSD-style UNet .safetensors file that replaces its UNet.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from nitro_edge.errors import SourceError
from nitro_edge.schedule import NoiseSchedule, SamplerParams

PIPELINES = {"StableDiffusionPipeline": "sd", "StableDiffusionXLPipeline": "sdxl"}
SUBFOLDERS = {
    "sd": ("text_encoder", "tokenizer", "unet", "vae", "scheduler"),
    "sdxl": ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "unet", "vae", "scheduler"),
}
DEFAULT_SHIFT = 1000  # no shift: one step at t = 999, the usual turbo convention
# Licences of released one-step UNets we can recognise by file name.
KNOWN_LICENCES = {"nitrosd-realism": "cc-by-nc-4.0 (non-commercial)", "nitrosd-vibrant": "openrail++"}


@dataclass(frozen=True)
class Source:
    """A recognised source: where it is, what it is, and the sampler parameters it implies."""

    path: Path
    architecture: str
    unet_file: Path | None
    params: SamplerParams
    shift_source: str  # "argument", "scheduler_config" or "default"
    licence: str | None
    tiny_vae: Path | None = None  # an AutoencoderTiny folder replacing the VAE decoder
    loras: tuple = ()  # nitro_edge.models.lora.Lora files merged into the text encoder(s) and generator

    def describe(self) -> dict:
        single = self.path / "nitro_edge_single_file.json"  # converted from a single-file checkpoint
        return {
            "path": str(self.path),
            **({"single_file": json.loads(single.read_text())} if single.is_file() else {}),
            "unet_file": str(self.unet_file) if self.unet_file else None,
            "architecture": self.architecture,
            "shift_source": self.shift_source,
            "licence": self.licence,
            "tiny_vae": str(self.tiny_vae) if self.tiny_vae else None,
            "loras": [lora.describe() for lora in self.loras],
        }


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SourceError(f"cannot read {path}: {exc}") from exc


def is_pipeline_folder(path: Path) -> bool:
    return (Path(path) / "model_index.json").is_file()


def resolve_source(
    path: str | Path,
    unet: str | Path | None = None,
    shift: int | None = None,
    tiny_vae: str | Path | None = None,
    loras=(),
    prediction_type: str | None = None,
) -> Source:
    """Recognise `path` (and `unet`), or raise SourceError saying what was found and what is expected.

    `path` is a diffusers pipeline folder, or a single-file checkpoint (.safetensors, the original
    SD1.5/SD2.1/SDXL layout), converted once into a diffusers folder in the cache
    (nitro_edge.models.single_file); `prediction_type` applies to single files only (SD2.x files
    do not record it; epsilon unless given)."""
    path = Path(path)
    expected = (
        "expected a diffusers SD1.5, SD2.1 or SDXL pipeline folder (with model_index.json) or a single-file "
        ".safetensors checkpoint"
    )
    if not path.exists():
        raise SourceError(f"source not found: {path}; {expected}")
    if path.is_file() and path.suffix == ".safetensors":
        from nitro_edge.default_model import cache_dir
        from nitro_edge.models import single_file

        path, _ = single_file.cached_folder(path, cache_dir(), prediction_type or "epsilon")
    elif prediction_type is not None:
        raise SourceError("--prediction-type applies to single-file checkpoints only (a folder's scheduler says it)")
    if path.is_file():
        raise SourceError(f"source {path} is a file; {expected}")
    if not is_pipeline_folder(path):
        found = sorted(p.name for p in path.iterdir())[:8]
        raise SourceError(f"{path} has no model_index.json (found {found or 'nothing'}); {expected}")
    index = _read_json(path / "model_index.json")
    class_name = index.get("_class_name")
    family = PIPELINES.get(class_name)
    if family is None:
        raise SourceError(f"{path} is a {class_name!r} pipeline; {expected}")
    needed = [s for s in SUBFOLDERS[family] if not (s == "unet" and unet is not None)]
    missing = [s for s in needed if not (path / s).is_dir()]
    if missing:
        raise SourceError(f"{path} ({class_name}) lacks the subfolders {missing}; {expected}")
    architecture = "sdxl" if family == "sdxl" else _sd_version(path)

    unet_file = None
    if unet is not None:
        unet_file = Path(unet)
        if not unet_file.is_file() or unet_file.suffix != ".safetensors":
            raise SourceError(f"--unet must be an existing .safetensors UNet file, got {unet_file}")

    sched = _read_json(path / "scheduler" / "scheduler_config.json")
    schedule = NoiseSchedule(
        num_train_timesteps=int(sched.get("num_train_timesteps", 1000)),
        beta_start=float(sched.get("beta_start", 0.00085)),
        beta_end=float(sched.get("beta_end", 0.012)),
        beta_schedule=sched.get("beta_schedule", "scaled_linear"),
        prediction_type=sched.get("prediction_type", "epsilon"),
    )
    if shift is not None:
        shift_value, shift_source = int(shift), "argument"
    elif sched.get("shifted_timestep") is not None:
        shift_value, shift_source = int(sched["shifted_timestep"]), "scheduler_config"
    else:
        shift_value, shift_source = DEFAULT_SHIFT, "default"
    params = SamplerParams(schedule=schedule, shift=shift_value)
    return Source(
        path,
        architecture,
        unet_file,
        params,
        shift_source,
        _licence(path, unet_file),
        _tiny_vae(tiny_vae),
        _loras(loras),
    )


def _loras(loras) -> tuple:
    """LoRA files as Lora records (given as Lora, or as "FILE[:SCALE]" strings or paths)."""
    if not loras:
        return ()
    from nitro_edge.models.lora import Lora

    return tuple(x if isinstance(x, Lora) else Lora.parse(str(x)) for x in loras)


def _tiny_vae(folder: str | Path | None) -> Path | None:
    """An AutoencoderTiny (TAESD family) folder, checked by its config."""
    if folder is None:
        return None
    folder = Path(folder)
    config = folder / "config.json"
    if not config.is_file() or _read_json(config).get("_class_name") != "AutoencoderTiny":
        raise SourceError(f"--tiny-vae must be a diffusers AutoencoderTiny folder (config.json), got {folder}")
    return folder


def _sd_version(path: Path) -> str:
    """SD2.x uses OpenCLIP's text tower (gelu); SD1.x uses OpenAI CLIP (quick_gelu)."""
    config = _read_json(path / "text_encoder" / "config.json")
    return "sd21" if config.get("hidden_act") == "gelu" else "sd15"


def _licence(path: Path, unet_file: Path | None) -> str | None:
    if unet_file is not None:
        for key, licence in KNOWN_LICENCES.items():
            if key in unet_file.name.lower():
                return licence
    readme = path / "README.md"
    if readme.is_file():
        match = re.search(r"^license:\s*(\S+)", readme.read_text(errors="replace"), re.MULTILINE)
        if match:
            return match.group(1)
    return None
