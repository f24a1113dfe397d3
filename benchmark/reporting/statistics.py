"""Seed statistics: is the difference between two methods larger than seed noise?

The difference of means of a metric (Ā or A_T) between methods A and B over their finished seeds, with a 95 %
confidence interval from Student's t: paired by seed when both have exactly the same seeds (``scipy.stats.
ttest_rel``), Welch's unequal-variance interval otherwise (``ttest_ind(equal_var=False)``). With fewer than two
seeds (paired) or fewer than two on either side (Welch) no interval can be given.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

LEVEL = 0.95


@dataclass(frozen=True)
class Difference:
    """``mean(A) - mean(B)`` of ``metric`` with its 95 % interval (``low``/``high`` None when none can be given)."""

    metric: str
    a: str
    b: str
    seeds_a: tuple
    seeds_b: tuple
    test: str
    difference: float
    low: float | None
    high: float | None

    @property
    def has_interval(self) -> bool:
        """Whether an interval could be computed (at least two seeds, see the module docstring)."""
        return self.low is not None

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies entirely above or below 0 (False without an interval)."""
        return self.has_interval and (self.low > 0 or self.high < 0)

    def verdict(self) -> str:
        """One phrase: the interval's verdict, or why there is none."""
        if not self.has_interval:
            return "no interval can be given: " + ("one seed" if self.test == "paired t" else
                                                   "fewer than two seeds on one side") + "; run more seeds"
        if self.excludes_zero:
            return f"interval excludes 0: {self.a if self.difference > 0 else self.b} is better beyond seed noise"
        return "interval includes 0: no difference beyond seed noise"


def seed_values(finished: pd.DataFrame, method: str, column: str) -> pd.Series:
    """``column`` of ``method``'s finished runs, indexed by seed (sorted)."""
    runs = finished[finished["method"] == method]
    return runs.set_index("seed")[column].astype(float).sort_index()


def compare(finished: pd.DataFrame, a: str, b: str, column: str) -> Difference:
    """The difference A - B of ``column`` over the finished runs of one benchmark (see the module docstring)."""
    values_a, values_b = seed_values(finished, a, column), seed_values(finished, b, column)
    difference = float(values_a.mean() - values_b.mean())
    paired = list(values_a.index) == list(values_b.index)
    low = high = None
    if paired and len(values_a) >= 2:
        deltas = values_a.to_numpy() - values_b.to_numpy()
        if np.ptp(deltas) == 0:  # every seed gives the same difference: t is undefined, the interval a point
            low = high = difference
        else:
            interval = stats.ttest_rel(values_a.to_numpy(), values_b.to_numpy()).confidence_interval(LEVEL)
            low, high = float(interval.low), float(interval.high)
    elif not paired and len(values_a) >= 2 and len(values_b) >= 2:
        interval = stats.ttest_ind(values_a.to_numpy(), values_b.to_numpy(),
                                   equal_var=False).confidence_interval(LEVEL)
        low, high = float(interval.low), float(interval.high)
        if math.isnan(low):  # both sides without spread
            low = high = difference
    return Difference(metric=column, a=a, b=b, seeds_a=tuple(values_a.index), seeds_b=tuple(values_b.index),
                      test="paired t" if paired else "Welch t", difference=difference, low=low, high=high)
