"""What each target's export() receives for one component: the torch module it converts (loaded
when first asked for, released when the component is done), real inputs to trace with and to
calibrate on, and the fp32 ONNX trace shared by targets that start from ONNX (traced once)."""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nitro_edge.specs import ComponentSpec


@dataclass(frozen=True)
class Variant:
    """Another way a runtime opens a target's artifacts, held to its own floor by the gate (per
    component and end to end): the ONNX .ort files, OpenVINO at the device's default precision."""

    options: dict  # runtime load() options that select it
    floor: str | None = None  # the precision whose floors apply; None: the artifact's own
    facts: dict = field(default_factory=dict)  # recorded beside its figures (e.g. the compute precision)
    required: bool = True  # False: a variant under its floor is recorded as not passing, the export goes on


@dataclass
class ComponentSource:
    spec: ComponentSpec
    load: Callable[[], object]  # -> torch.nn.Module returning a tuple in spec.outputs order
    example: dict[str, np.ndarray]  # batch 1, used to trace
    calibration: list[dict[str, np.ndarray]]  # batch-1 inputs seen in real sampling runs
    scratch: Path
    _module: object | None = field(default=None, repr=False)
    _onnx: Path | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def module(self):
        if self._module is None:
            self._module = self.load()
        return self._module

    def release(self) -> None:
        """Drop the torch module (it is loaded again if a target asks for it)."""
        self._module = None
        gc.collect()

    def onnx_fp32(self) -> Path:
        """The fp32 ONNX trace (with external data if large), made once per export run."""
        if self._onnx is None:
            from nitro_edge.export import onnx as onnx_target

            files = onnx_target.trace(self.module, self.spec, self.example, self.scratch / "onnx-fp32")
            self._onnx = files[0]
        return self._onnx


def load_for_export(source, name: str):
    """The torch module export converts for component `name` of `source`: load_module's, with the
    upsampling convolutions of the VAE decoder and of the generator's UNet folded
    (nitro_edge.models.upsampling: the same function in fewer operations; the gate's reference keeps
    the original)."""
    from nitro_edge.models.loading import load_module
    from nitro_edge.models.upsampling import fold_upsampling

    module = load_module(source, name)
    if name in ("generator", "vae_decoder"):
        fold_upsampling(module)
    return module
