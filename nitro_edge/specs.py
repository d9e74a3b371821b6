"""Component specs: input/output names, shapes and dtypes, and parity floors per precision.

Specs are data shared by export (what to trace and check) and runtimes (what to feed and verify).
A component is any callable from named numpy arrays to named numpy arrays; `checked` wraps one so
that bad input is refused where it enters and NaN/Inf output is reported with the component's name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field

import numpy as np

from nitro_edge.errors import ComponentError, InputError

Arrays = Mapping[str, np.ndarray]
Component = Callable[..., dict]

ARCHITECTURES = ("sd15", "sd21", "sdxl")
COMPONENTS = {
    "sd15": ("text_encoder", "generator", "vae_decoder"),
    "sd21": ("text_encoder", "generator", "vae_decoder"),
    "sdxl": ("text_encoder", "text_encoder_2", "generator", "vae_decoder"),
}
BATCH = "batch"


@dataclass(frozen=True)
class Floor:
    """The parity a precision must reach against torch: per component (max abs error for fp32,
    signal-to-noise ratio in dB otherwise) and end to end (image PSNR in dB)."""

    psnr_db: float
    component_max_abs: float = float("inf")
    component_snr_db: float = 0.0


# fp32: 50 dB end to end, and per component an SNR of 60 dB rather than an absolute 1e-4: fp32
# in another summation order drifts with reduction length, and the full-size SDXL VAE decoder at
# 1024² differs from torch by 1.7e-4 max abs at 82 dB SNR (tiny models: ~1e-6, ~130 dB). The
# others are set from the measurements in docs/export.md (tiny models) with margin; Core ML's are
# starting points, checked only on macOS.
FLOORS = {
    "fp32": Floor(psnr_db=50.0, component_snr_db=60.0),
    "fp16": Floor(psnr_db=35.0, component_snr_db=30.0),
    "int8": Floor(psnr_db=25.0, component_snr_db=15.0),
    "int8-hybrid": Floor(psnr_db=25.0, component_snr_db=15.0),
    "int8-act": Floor(psnr_db=25.0, component_snr_db=15.0),
    "pal8": Floor(psnr_db=25.0, component_snr_db=15.0),
    "pal6": Floor(psnr_db=20.0, component_snr_db=10.0),
    "pal4": Floor(psnr_db=15.0, component_snr_db=5.0),
}
PRECISIONS = tuple(FLOORS)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple  # ints, or BATCH for the batch axis

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: dict) -> TensorSpec:
        name, dtype, shape = data["name"], data["dtype"], data["shape"]
        if (
            not isinstance(name, str)
            or dtype not in ("float32", "float16", "int64", "int32")
            or not isinstance(shape, list)
        ):
            raise ValueError(
                f"tensor spec needs name (str), dtype (float32/float16/int64/int32), shape (list): {data!r}"
            )
        if not all(d == BATCH or (isinstance(d, int) and not isinstance(d, bool) and 0 < d < 1 << 20) for d in shape):
            raise ValueError(f"tensor {name} shape entries must be positive ints or {BATCH!r}, got {shape!r}")
        return cls(name=name, dtype=dtype, shape=tuple(shape))


@dataclass(frozen=True)
class ComponentSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def to_dict(self) -> dict:
        return {
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }

    @classmethod
    def from_dict(cls, name: str, data: dict) -> ComponentSpec:
        if not isinstance(data.get("inputs"), list) or not isinstance(data.get("outputs"), list):
            raise ValueError(f"component {name} needs inputs and outputs lists")
        return cls(
            name=name,
            inputs=tuple(TensorSpec.from_dict(t) for t in data["inputs"]),
            outputs=tuple(TensorSpec.from_dict(t) for t in data["outputs"]),
        )


@dataclass(frozen=True)
class ModelDims:
    """The sizes that fix every component's shapes for one bundle."""

    architecture: str
    height: int
    width: int
    text_hidden: tuple[int, ...]  # hidden size of each text encoder
    pooled_dim: int = 0  # SDXL's text_encoder_2 projection (text_embeds)
    latent_channels: int = 4
    vae_scale_factor: int = 8
    max_length: int = 77
    extra: dict = field(default_factory=dict)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.latent_channels, self.height // self.vae_scale_factor, self.width // self.vae_scale_factor)

    def time_ids(self, batch: int) -> np.ndarray:
        """SDXL's micro-conditioning, float32 (batch, 6): original size, crop top-left, target size."""
        h, w = self.height, self.width
        return np.tile(np.array([h, w, 0, 0, h, w], dtype=np.float32), (batch, 1))

    def to_dict(self) -> dict:
        data = asdict(self)
        data["text_hidden"] = list(self.text_hidden)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ModelDims:
        data = dict(data)
        data["text_hidden"] = tuple(data["text_hidden"])
        return cls(**data)


def component_specs(dims: ModelDims) -> dict[str, ComponentSpec]:
    """The spec of every component of a bundle with these dimensions."""
    b, length = BATCH, dims.max_length
    ids = TensorSpec("input_ids", "int64", (b, length))
    specs: dict[str, ComponentSpec] = {}
    for i, hidden in enumerate(dims.text_hidden):
        name = "text_encoder" if i == 0 else f"text_encoder_{i + 1}"
        outputs = [TensorSpec("encoder_hidden_states", "float32", (b, length, hidden))]
        if dims.architecture == "sdxl" and i == 1:
            outputs.append(TensorSpec("text_embeds", "float32", (b, dims.pooled_dim)))
        specs[name] = ComponentSpec(name, (ids,), tuple(outputs))
    latent = (b, *dims.latent_shape)
    gen_inputs = [
        TensorSpec("sample", "float32", latent),
        TensorSpec("timestep", "int64", (b,)),
        TensorSpec("encoder_hidden_states", "float32", (b, length, sum(dims.text_hidden))),
    ]
    if dims.architecture == "sdxl":
        gen_inputs += [
            TensorSpec("text_embeds", "float32", (b, dims.pooled_dim)),
            TensorSpec("time_ids", "float32", (b, 6)),
        ]
    specs["generator"] = ComponentSpec("generator", tuple(gen_inputs), (TensorSpec("denoised", "float32", latent),))
    specs["vae_decoder"] = ComponentSpec(
        "vae_decoder",
        (TensorSpec("latents", "float32", latent),),
        (TensorSpec("image", "float32", (b, 3, dims.height, dims.width)),),
    )
    return specs


def check_arrays(component: str, specs: tuple[TensorSpec, ...], arrays: Arrays, what: str) -> None:
    """Raise InputError unless `arrays` has exactly the names, dtypes and shapes of `specs`."""
    expected = {t.name for t in specs}
    if set(arrays) != expected:
        raise InputError(f"{component} {what}: expected arrays {sorted(expected)}, got {sorted(arrays)}")
    batch = None
    for spec in specs:
        value = arrays[spec.name]
        if not isinstance(value, np.ndarray):
            raise InputError(f"{component}.{spec.name}: expected a numpy array, got {type(value).__name__}")
        if value.dtype != np.dtype(spec.dtype):
            raise InputError(f"{component}.{spec.name}: expected dtype {spec.dtype}, got {value.dtype}")
        if value.ndim != len(spec.shape):
            raise InputError(f"{component}.{spec.name}: expected shape {_show(spec.shape)}, got {tuple(value.shape)}")
        for axis, (want, got) in enumerate(zip(spec.shape, value.shape)):
            if want == BATCH:
                batch = got if batch is None else batch
                if got != batch or got < 1:
                    raise InputError(f"{component}.{spec.name}: batch axis {axis} is {got}, expected {batch} (>= 1)")
            elif want != got:
                raise InputError(
                    f"{component}.{spec.name}: expected shape {_show(spec.shape)}, got {tuple(value.shape)}"
                )


def _show(shape: tuple) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def checked(spec: ComponentSpec, fn: Component) -> Component:
    """Wrap a component so its inputs are checked against `spec` and NaN/Inf output is refused."""

    def call(**arrays: np.ndarray) -> dict:
        check_arrays(spec.name, spec.inputs, arrays, "input")
        out = fn(**arrays)
        for tensor in spec.outputs:
            if tensor.name not in out:
                raise ComponentError(f"{spec.name} returned {sorted(out)}, missing {tensor.name!r}")
            if not np.all(np.isfinite(out[tensor.name])):
                raise ComponentError(f"{spec.name} produced NaN or Inf in {tensor.name!r}")
        return out

    call.spec = spec  # type: ignore[attr-defined]
    return call


def selected(bundle, components=None) -> list[tuple[str, ComponentSpec]]:
    """(name, spec) of the bundle's components, or of `components` only (checked against the bundle)."""
    if components is None:
        return list(bundle.specs.items())
    unknown = [c for c in components if c not in bundle.specs]
    if unknown:
        raise InputError(f"components must be among {sorted(bundle.specs)}, got {unknown}")
    return [(name, bundle.specs[name]) for name in components]
