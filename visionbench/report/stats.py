"""Is a difference real? 95 % confidence intervals of a cell's test metric and paired tests between two cells, from
the runs' test values and their per-image test outputs (visionbench/per_image.py).

- A cell of several finished runs (seeds): Student's t interval on the mean of their test values, n - 1 degrees
  of freedom. It measures training randomness, and with 3 seeds it is wide (t = 4.30).
- A cell of one run: the percentile bootstrap over its test images, `RESAMPLES` resamples drawn with a fixed seed
  (a report is reproducible), the metric recomputed on each with the definition the run used (`per_image.score`).
  It measures test-set sampling only, not training randomness.
- A paired test of two cells on the same test images, the difference (b - a) with its interval and p-value:
  McNemar's exact test for accuracy between two single runs (a binomial test on the images that one run gets right
  and the other wrong) with the matching exact interval; else the paired bootstrap (both cells scored on the same
  resamples): its percentile interval, and its p-value from the resampled differences shifted to the null
  hypothesis of no difference (Efron & Tibshirani 1993, section 16.4).
  Cells of several runs are compared through the mean over their runs on each resample (the seeds need not pair
  up): a test of the seed-averaged models on these test images, not of training randomness.

P-values are not corrected for multiple comparisons.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Iterator

import numpy as np

from visionbench.per_image import PerImage, score

LEVEL = 0.95
# 1,000 resamples: the ends of the percentile interval of a 90.7 % accuracy on 10,000 images have a standard
# deviation of 0.02 percentage points over 20 generator seeds (0.07 of the accuracy's standard error), below the
# table's last digit; 0.4 s an interval on 2 vCPUs.
RESAMPLES = 1000
SEED = 0
_CHUNK_ELEMENTS = 1 << 22  # resample counts drawn at a time (32 MiB of int64 draws)


def t_interval(values: list[float]) -> tuple[float, float]:
    """Student's t interval (`LEVEL`) on the mean of `values` (at least two)."""
    from scipy import stats

    mean, sem = statistics.mean(values), statistics.stdev(values) / math.sqrt(len(values))
    if sem == 0:
        return mean, mean
    low, high = stats.t.interval(LEVEL, len(values) - 1, loc=mean, scale=sem)
    return float(low), float(high)


def resample_counts(images: int, resamples: int = RESAMPLES, seed: int = SEED) -> Iterator[np.ndarray]:
    """How often each image is drawn in each bootstrap resample (uniform, with replacement), in chunks of
    (r, images) int32 that together make `resamples` rows; the same seed gives the same resamples."""
    rng = np.random.default_rng(seed)
    step = max(1, _CHUNK_ELEMENTS // images)
    for start in range(0, resamples, step):
        r = min(step, resamples - start)
        drawn = rng.integers(0, images, size=(r, images)) + images * np.arange(r)[:, None]
        yield np.bincount(drawn.ravel(), minlength=r * images).reshape(r, images).astype(np.int32)


def _percentiles(values: np.ndarray) -> tuple[float, float]:
    tail = 100 * (1 - LEVEL) / 2
    low, high = np.nanpercentile(values, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_interval(data: PerImage, resamples: int = RESAMPLES, seed: int = SEED) -> tuple[float, float]:
    """The percentile bootstrap interval (`LEVEL`) of one run's metric over its test images."""
    values = np.concatenate([score(data, counts) for counts in resample_counts(data.images, resamples, seed)])
    return _percentiles(values)


@dataclasses.dataclass(frozen=True)
class Comparison:
    """b against a on the same images: the difference of their metrics (b - a), its interval, the p-value."""

    difference: float
    low: float
    high: float
    p: float
    test: str
    images: int


def mcnemar(a: np.ndarray, b: np.ndarray) -> Comparison:
    """McNemar's exact test of two right/wrong vectors on the same images: of the images on which they disagree,
    how unlikely so uneven a split is when each side is equally likely (scipy's two-sided binomial test). The
    interval of the accuracy difference is the exact (Clopper-Pearson) interval of the share of those images that b
    gets right, scaled to all images: conditional on their number, as the test is, so the two agree."""
    from scipy.stats import binomtest

    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    images, discordant = len(a), a_only + b_only
    test = f"McNemar exact ({b_only} vs {a_only} images)"
    if discordant == 0:
        return Comparison(0.0, 0.0, 0.0, 1.0, test, images)
    result = binomtest(b_only, discordant, 0.5)
    share = result.proportion_ci(LEVEL, method="exact")
    scale = discordant / images
    low, high = scale * (2 * share.low - 1), scale * (2 * share.high - 1)
    return Comparison((b_only - a_only) / images, low, high, float(result.pvalue), test, images)


def _mean_score(runs: list[PerImage], counts: np.ndarray) -> np.ndarray:
    return np.mean([score(run, counts) for run in runs], axis=0)


def paired(a: list[PerImage], b: list[PerImage], resamples: int = RESAMPLES, seed: int = SEED) -> Comparison:
    """Compare the runs of cell `b` with those of cell `a`, all on the same test images (the caller checks it):
    McNemar's test for two single runs with right/wrong bits, else the paired bootstrap (module docstring)."""
    if len(a) == len(b) == 1 and "correct" in a[0].arrays and "correct" in b[0].arrays:
        return mcnemar(a[0].arrays["correct"], b[0].arrays["correct"])
    images = a[0].images
    full = np.ones((1, images), dtype=np.int32)
    observed = float(_mean_score(b, full)[0] - _mean_score(a, full)[0])
    diffs = np.concatenate(
        [_mean_score(b, counts) - _mean_score(a, counts) for counts in resample_counts(images, resamples, seed)]
    )
    low, high = _percentiles(diffs)
    finite = diffs[np.isfinite(diffs)]
    extreme = int((np.abs(finite - observed) >= abs(observed)).sum())  # as far from the observed as 0 is, or further
    return Comparison(observed, low, high, (1 + extreme) / (1 + len(finite)), "paired bootstrap", images)
