"""The shifted LCM grid and the noise schedule against the figures in METHOD.md."""

import numpy as np
import pytest

from nitro_edge.errors import InputError
from nitro_edge.schedule import NoiseSchedule, SamplerParams

TABLE = {  # steps: (LCM t, UNet t at shift 250, UNet t at shift 500)
    1: ([999], [249], [499]),
    2: ([999, 499], [249, 124], [499, 249]),
    3: ([999, 749, 499], [249, 187, 124], [499, 374, 249]),
    4: ([999, 749, 499, 249], [249, 187, 124, 62], [499, 374, 249, 124]),
}


@pytest.mark.parametrize("steps", [1, 2, 3, 4])
def test_grid_matches_method_table(steps):
    lcm, s250, s500 = TABLE[steps]
    for shift, want in ((250, s250), (500, s500)):
        params = SamplerParams(NoiseSchedule(), shift=shift)
        assert params.lcm_timesteps(steps).tolist() == lcm
        assert params.generator_timesteps(steps).tolist() == want
    assert SamplerParams(NoiseSchedule(), shift=1000).generator_timesteps(steps).tolist() == lcm


def test_alphas_cumprod_sdxl_values():
    alphas = NoiseSchedule().alphas_cumprod()
    assert alphas.dtype == np.float32 and alphas.shape == (1000,)
    assert alphas[249] == pytest.approx(0.675, abs=0.002)
    assert alphas[499] == pytest.approx(0.278, abs=0.002)


def test_boundary_scalings_are_near_identity():
    c_skip, c_out = SamplerParams(NoiseSchedule(), shift=250).boundary_scalings(62)
    assert c_skip < 1e-6 and c_out == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("bad", [0, 5, -1, 2.0, True, "1"])
def test_steps_outside_range_are_refused(bad):
    with pytest.raises(InputError, match="steps must be an integer from 1 to 4"):
        SamplerParams(NoiseSchedule()).lcm_timesteps(bad)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(beta_schedule="cosine"), "beta_schedule"),
        (dict(prediction_type="sample"), "prediction_type"),
    ],
)
def test_bad_schedule_is_refused(kwargs, match):
    with pytest.raises(InputError, match=match):
        NoiseSchedule(**kwargs)


def test_shift_out_of_range_is_refused():
    with pytest.raises(InputError, match="shift must be between 1 and 1000, got 0"):
        SamplerParams(NoiseSchedule(), shift=0)
