"""The statistics behind a verdict: seed spreads and the stated tests of the findings.

A finding's verdict is one of :data:`VERDICTS`. Its tests compare the means of two variants
against the spread of their seeds: an effect "holds" when it exceeds ``Z`` standard deviations of
that spread, "does-not-hold" when the opposite effect does, and is "inconclusive" in between or
when there is no spread to measure (one seed).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

VERDICTS = ("holds", "does-not-hold", "inconclusive")
HOLDS, FAILS, INCONCLUSIVE = VERDICTS
Z = 2.0  # how many standard deviations of the seed spread an effect must exceed


@dataclasses.dataclass(frozen=True)
class Stats:
    """Per-seed values of one measured quantity."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.values else math.nan

    @property
    def std(self) -> float:
        """Sample standard deviation (ddof 1); NaN for fewer than two seeds."""
        return float(np.std(self.values, ddof=1)) if self.n > 1 else math.nan

    def to_json(self) -> dict:
        return {"mean": self.mean, "std": None if math.isnan(self.std) else self.std,
                "values": list(self.values), "seeds": self.n}


def stats(values) -> Stats:
    return Stats(tuple(float(v) for v in values))


def spread(*groups: Stats) -> float:
    """The pooled standard deviation of one seed's value; NaN when no group has two seeds."""
    pairs = [(g.n - 1, g.std ** 2) for g in groups if g.n > 1]
    if not pairs:
        return math.nan
    dof = sum(d for d, _ in pairs)
    return math.sqrt(sum(d * v for d, v in pairs) / dof)


@dataclasses.dataclass(frozen=True)
class Test:
    """One comparison: is ``larger``'s mean above ``smaller``'s by more than ``Z`` seed spreads?"""

    verdict: str
    difference: float
    spread: float
    text: str


def exceeds(larger: Stats, smaller: Stats, *, what: str) -> Test:
    """``larger.mean - smaller.mean`` against ``Z`` pooled seed standard deviations."""
    d, s = larger.mean - smaller.mean, spread(larger, smaller)
    if math.isnan(s):
        return Test(INCONCLUSIVE, d, s, f"{what}: difference {d:+.4g}, but one seed has no spread to test it against")
    threshold = Z * s
    if d > threshold:
        verdict = HOLDS
    elif d < -threshold:
        verdict = FAILS
    else:
        verdict = INCONCLUSIVE
    return Test(verdict, d, s, f"{what}: difference {d:+.4g} vs {Z:g} x seed std {s:.4g} = {threshold:.4g}")


def not_above(first: Stats, second: Stats, *, what: str) -> Test:
    """``first`` is not worse than ``second`` by more than ``Z`` seed spreads (holds), is worse by
    more (does-not-hold); one seed: inconclusive unless the means already agree."""
    d, s = first.mean - second.mean, spread(first, second)
    if math.isnan(s):
        verdict = HOLDS if d <= 0 else INCONCLUSIVE
    else:
        verdict = HOLDS if d <= Z * s else FAILS
    return Test(verdict, d, s, f"{what}: difference {d:+.4g} (must not exceed {Z:g} x seed std"
                               f"{'' if math.isnan(s) else f' {s:.4g}'})")


def all_of(*tests: Test) -> str:
    """Holds when every test holds, does-not-hold when any fails, else inconclusive."""
    verdicts = [t.verdict for t in tests]
    if FAILS in verdicts:
        return FAILS
    return HOLDS if all(v == HOLDS for v in verdicts) else INCONCLUSIVE


def below_all(value: float, singles: Stats, *, what: str) -> Test:
    """A combined result (an ensemble) against its members: holds below the best member, fails
    above their mean, inconclusive in between."""
    best, mean = min(singles.values), singles.mean
    verdict = HOLDS if value < best else FAILS if value > mean else INCONCLUSIVE
    return Test(verdict, mean - value, singles.std,
                f"{what}: {value:.4g} vs best single {best:.4g} and mean single {mean:.4g}")


def positive(gains: Stats, *, what: str) -> Test:
    """Paired gains (one per seed): holds when their mean exceeds ``Z`` standard deviations of the
    gains, does-not-hold when it is below minus that, else inconclusive (and with one seed)."""
    m, s = gains.mean, gains.std
    if math.isnan(s):
        return Test(INCONCLUSIVE, m, s, f"{what}: mean {m:+.4g}, but one seed has no spread to test it against")
    verdict = HOLDS if m > Z * s else FAILS if m < -Z * s else INCONCLUSIVE
    return Test(verdict, m, s, f"{what}: mean {m:+.4g} vs {Z:g} x std {s:.4g} = {Z * s:.4g}")
