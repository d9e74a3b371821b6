"""The parity gate: every artifact against the torch module it came from, per component and end to end."""

from __future__ import annotations

import math

import numpy as np

from nitro_edge.errors import ComponentError, ParityError
from nitro_edge.specs import FLOORS, Component

PSNR_CAP_DB = 200.0  # identical images: report this instead of infinity (JSON has no inf)


def psnr_db(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two images in [0, 1]."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return PSNR_CAP_DB if mse == 0 else min(PSNR_CAP_DB, 10 * math.log10(1.0 / mse))


def snr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Signal-to-noise ratio of `candidate` against `reference`, in dB (capped like PSNR)."""
    noise = float(np.sum((reference.astype(np.float64) - candidate) ** 2))
    signal = float(np.sum(reference.astype(np.float64) ** 2))
    if noise == 0:
        return PSNR_CAP_DB
    return min(PSNR_CAP_DB, 10 * math.log10(max(signal, 1e-30) / noise))


def compare_component(name: str, reference: Component, candidate: Component, arrays: dict, precision: str) -> dict:
    """Max abs error and SNR of one component on the same inputs; ParityError below the floor."""
    floor = FLOORS[precision]
    ref = reference(**arrays)
    try:
        got = candidate(**arrays)
    except ComponentError as exc:  # NaN or Inf: fp16 overflow, typically
        raise ParityError(f"{name} fails parity: {exc}") from exc
    max_abs = max(float(np.abs(ref[k] - got[k]).max()) for k in ref)
    snr = min(snr_db(ref[k], got[k]) for k in ref)
    if not (max_abs <= floor.component_max_abs and snr >= floor.component_snr_db):
        raise ParityError(
            f"{name} differs from torch by {max_abs:.3g} max abs, SNR {snr:.1f} dB; the {precision} floor is "
            f"max abs {floor.component_max_abs:g}, SNR {floor.component_snr_db:g} dB"
        )
    return {"max_abs": max_abs, "snr_db": round(snr, 2)}


def compare_images(reference: np.ndarray, candidate: np.ndarray, precision: str, what: str) -> float:
    """End-to-end PSNR in dB; ParityError below the precision's floor (NaN counts as failure)."""
    floor = FLOORS[precision]
    if not np.all(np.isfinite(candidate)):
        raise ParityError(f"{what}: the image has NaN or Inf values")
    value = psnr_db(reference, candidate)
    if not value >= floor.psnr_db:
        raise ParityError(f"{what}: end-to-end PSNR {value:.1f} dB is under the {precision} floor {floor.psnr_db} dB")
    return value
