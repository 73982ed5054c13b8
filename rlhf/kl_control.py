"""Running state of the value-model algorithms: the adaptive KL coefficient and running reward statistics.

Both are plain objects with `state_dict()` / `load_state_dict()` of floats, saved with every checkpoint so a resumed
run continues with the same coefficient and the same normalisation.
"""

from __future__ import annotations

import math


class KLController:
    """Fixed, or adaptive (Ziegler et al. 2019, arXiv:1909.08593, section 2.2):

    e = clip(KL / target - 1, -0.2, 0.2);  beta <- beta * (1 + e * n / horizon)

    where KL is the mean per-sequence KL to the reference and n the number of sequences of the step. The clip bounds
    how fast beta moves whatever one noisy batch says."""

    def __init__(self, beta: float, target: float | None = None, horizon: int = 10000):
        self.value = float(beta)
        self.target = target
        self.horizon = horizon

    def update(self, kl: float, n_sequences: int) -> None:
        if self.target is None or not math.isfinite(kl):
            return
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_sequences / self.horizon

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class RunningMoments:
    """Mean and std of everything seen so far (Chan et al.'s parallel update of count, mean and M2), for
    normalising rewards across steps."""

    def __init__(self) -> None:
        self.count, self.mean, self.m2 = 0.0, 0.0, 0.0

    def update(self, total: float, sq_total: float, n: float) -> None:
        """Add a batch given its sum, sum of squares and count (so ranks can reduce them first)."""
        if n <= 0:
            return
        b_mean = total / n
        b_m2 = max(sq_total - n * b_mean * b_mean, 0.0)
        delta = b_mean - self.mean
        count = self.count + n
        self.mean += delta * n / count
        self.m2 += b_m2 + delta * delta * self.count * n / count
        self.count = count

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else 1.0

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.mean, self.m2 = float(state["count"]), float(state["mean"]), float(state["m2"])
