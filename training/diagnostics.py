"""Whether the adversarial stage learns, in numbers a user can read: per discriminator timestep,
the heads' accuracy on real and on fake samples and the discriminator's and generator's losses;
the heads' ages when refreshed; and an alarm when the discriminator has stopped learning (it
cannot tell real from fake even at its least-noised timestep: the hinge loss sits at 2) or has won
outright (it is right about everything even at its most-noised timestep, so the student's
gradients carry little). Written to TensorBoard every log step and as JSON at every checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
from collections import deque
from pathlib import Path

import torch

log = logging.getLogger(__name__)

# What "no separation" means for each loss: the loss of logits at zero (hinge: 1 + 1; softplus: 2 ln 2).
CHANCE_LOSS = {"hinge": 2.0, "non_saturating": 1.3863}
STALLED_ACCURACY = 0.55  # the best timestep's mean accuracy at or under this: not learning
WON_ACCURACY = 0.98  # the worst timestep's real and fake accuracy at or over this: won outright
MIN_STEPS = 20  # no verdict before this many adversarial steps in the window


class Diagnostics:
    """Rolling means over the last `window` adversarial steps, per discriminator timestep."""

    def __init__(self, timesteps: tuple[int, ...], loss: str, window: int = 50):
        self.timesteps, self.loss, self.window = tuple(timesteps), loss, window
        self._steps: deque[dict] = deque(maxlen=window)
        self._current: dict = {}
        self._ages: deque[float] = deque(maxlen=window)
        self.state = "ok"
        self.alarms: list[dict] = []
        self.state_steps = {"warming up": 0, "ok": 0, "stalled": 0, "won": 0}  # adversarial steps in each verdict

    # -- what the loop reports
    def observe_discriminator(self, t: int, real: list[torch.Tensor], fake: list[torch.Tensor], loss: float) -> None:
        """One (t*, task)'s logit maps (one per level) and its discriminator loss, this micro-batch."""
        entry = self._current.setdefault(t, {"real_right": 0.0, "fake_right": 0.0, "n": 0, "loss_d": [], "loss_g": []})
        entry["real_right"] += sum(float((r > 0).float().mean()) for r in real) / len(real)
        entry["fake_right"] += sum(float((f < 0).float().mean()) for f in fake) / len(fake)
        entry["n"] += 1
        entry["loss_d"].append(loss)

    def observe_generator(self, t: int, loss: float) -> None:
        self._current.setdefault(t, {"real_right": 0.0, "fake_right": 0.0, "n": 0, "loss_d": [], "loss_g": []})[
            "loss_g"
        ].append(loss)

    def observe_refresh(self, ages: list[int]) -> None:
        """Ages (in steps) of the heads re-initialised this step."""
        self._ages.extend(float(a) for a in ages)

    def end_step(self, step: int) -> str | None:
        """Close this step's numbers; returns an alarm line when the verdict changes to a problem."""
        closed = {}
        for t, e in self._current.items():
            if e["n"]:
                closed[t] = {
                    "acc_real": e["real_right"] / e["n"],
                    "acc_fake": e["fake_right"] / e["n"],
                    "loss_d": sum(e["loss_d"]) / len(e["loss_d"]),
                    "loss_g": sum(e["loss_g"]) / len(e["loss_g"]) if e["loss_g"] else float("nan"),
                }
        self._current = {}
        self._steps.append(closed)
        verdict, line = self._verdict(step)
        warming = len(self._steps) < min(MIN_STEPS, self.window)
        self.state_steps["warming up" if warming else verdict] += 1
        changed = verdict != self.state
        self.state = verdict
        if changed and line:
            self.alarms.append({"step": step, "state": verdict, "message": line})
            return line
        return None

    # -- what the user reads
    def per_timestep(self) -> dict[int, dict]:
        """Window means per t*: acc_real, acc_fake, acc (their mean), loss_d, loss_g, steps."""
        out = {}
        for t in self.timesteps:
            rows = [s[t] for s in self._steps if t in s]
            if rows:
                mean = {k: sum(r[k] for r in rows) / len(rows) for k in ("acc_real", "acc_fake", "loss_d", "loss_g")}
                out[t] = {**mean, "acc": (mean["acc_real"] + mean["acc_fake"]) / 2, "steps": len(rows)}
        return out

    def scalars(self) -> dict[str, float]:
        """For TensorBoard: diag/acc_real/t10, diag/acc_fake/t10, ..., diag/refreshed_age_mean."""
        out = {}
        for t, row in self.per_timestep().items():
            for key in ("acc_real", "acc_fake", "loss_d", "loss_g"):
                out[f"diag/{key}/t{t}"] = row[key]
        if self._ages:
            out["diag/refreshed_age_mean"] = sum(self._ages) / len(self._ages)
        return out

    def summary(self, step: int) -> dict:
        ages = list(self._ages)
        return {
            "step": step,
            "window_steps": len(self._steps),
            "loss": self.loss,
            "chance_loss_d": CHANCE_LOSS[self.loss],
            "per_timestep": {
                str(t): {k: round(v, 4) for k, v in row.items()} for t, row in self.per_timestep().items()
            },
            "refreshed_head_age": (
                {"mean": round(sum(ages) / len(ages), 1), "min": min(ages), "max": max(ages)} if ages else None
            ),
            "state": self.state,
            # The share of this process's adversarial steps in each verdict (since its start or resume).
            "state_share": {
                k: round(v / max(1, sum(self.state_steps.values())), 3) for k, v in self.state_steps.items()
            },
            "alarms": self.alarms,
        }

    def write(self, path: Path, step: int) -> None:
        """The summary as JSON, written atomically."""
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.summary(step), indent=2))
        os.replace(tmp, path)

    def _verdict(self, step: int) -> tuple[str, str | None]:
        rows = self.per_timestep()
        if len(self._steps) < min(MIN_STEPS, self.window) or not rows:
            return self.state, None
        best_t = max(rows, key=lambda t: rows[t]["acc"])
        best = rows[best_t]
        if best["acc"] <= STALLED_ACCURACY and best["loss_d"] >= CHANCE_LOSS[self.loss] - 0.1:
            return "stalled", (
                f"step {step}: the discriminator is not learning: even at t*={best_t} its heads are "
                f"right on {best['acc']:.0%} of real/fake (chance 50%), loss {best['loss_d']:.2f} "
                f"(chance {CHANCE_LOSS[self.loss]:.2f}) over the last {len(self._steps)} steps; "
                "try a larger lr_heads, a wider head_width or a lower refresh_rate"
            )
        worst_t = min(rows, key=lambda t: min(rows[t]["acc_real"], rows[t]["acc_fake"]))
        worst = rows[worst_t]
        if min(worst["acc_real"], worst["acc_fake"]) >= WON_ACCURACY:
            return "won", (
                f"step {step}: the discriminator has won outright: even at t*={worst_t} its heads are "
                f"right on {worst['acc_real']:.0%} of real and {worst['acc_fake']:.0%} of fake over the "
                f"last {len(self._steps)} steps, so the student's gradients carry little; try a smaller "
                "lr_heads or a higher refresh_rate"
            )
        return "ok", None
