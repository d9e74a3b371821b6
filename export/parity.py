"""The parity gate: every artifact against the torch module it came from, per component and end to end."""

from __future__ import annotations

import math

import numpy as np

from nitro_edge.errors import ParityError
from nitro_edge.specs import FLOORS, Component

PSNR_CAP_DB = 200.0  # identical images: report this instead of infinity (JSON has no inf)


def psnr_db(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two images in [0, 1]."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return PSNR_CAP_DB if mse == 0 else min(PSNR_CAP_DB, 10 * math.log10(1.0 / mse))


def compare_components(
    reference: dict[str, Component], candidate: dict[str, Component], inputs: dict[str, dict], precision: str
) -> dict[str, float]:
    """Max abs error of each component on the same inputs; ParityError above the precision's floor."""
    floor = FLOORS[precision]
    errors = {}
    for name, arrays in inputs.items():
        ref, got = reference[name](**arrays), candidate[name](**arrays)
        errors[name] = max(float(np.abs(ref[k] - got[k]).max()) for k in ref)
        if not errors[name] <= floor.component_max_abs:
            raise ParityError(
                f"{name} differs from torch by {errors[name]:.3g} (max abs), over the {precision} floor "
                f"{floor.component_max_abs:g}"
            )
    return errors


def compare_images(reference: np.ndarray, candidate: np.ndarray, precision: str, what: str) -> float:
    """End-to-end PSNR in dB; ParityError below the precision's floor (NaN counts as failure)."""
    floor = FLOORS[precision]
    if not np.all(np.isfinite(candidate)):
        raise ParityError(f"{what}: the image has NaN or Inf values")
    value = psnr_db(reference, candidate)
    if not value >= floor.psnr_db:
        raise ParityError(f"{what}: end-to-end PSNR {value:.1f} dB is under the {precision} floor {floor.psnr_db} dB")
    return value
