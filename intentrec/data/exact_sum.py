"""Sums of float64 arrays that do not depend on the order or grouping of the values.

A partitioned preparation (``partitioned.py``) computes the target-weight mean from the
partitions' sums; floating-point addition is not associative, so ``np.mean`` over one array
and a sum of per-partition means differ in the last bits, and weights (and then training)
would differ between the two paths. Here every value is split exactly into an integer
mantissa and a power of two (``np.frexp``), mantissas are added as integers per exponent,
and the total is an exact rational: any grouping gives the same sum, rounded once.
``math.fsum`` is exact too but neither vectorised nor mergeable across processes; no numpy
or polars function offers an exact, mergeable sum, hence this small module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

_MANTISSA_BITS = 53
_HALF = 26  # mantissas are split into two parts of <= 27 bits: 2^36 values fit in int64


@dataclass
class ExactSum:
    """The exact sum of the finite values added so far, and how many values there were."""

    count: int = 0
    by_exponent: dict[int, int] = field(default_factory=dict)  # e -> sum of mantissas m
    nonfinite: float = 0.0  # np.sum of inf / nan values (they make the sum inf or nan)

    @classmethod
    def of(cls, values: np.ndarray) -> ExactSum:
        """The exact sum of a float array's values."""
        values = np.asarray(values, dtype=np.float64).ravel()
        out = cls(count=int(values.size))
        finite = np.isfinite(values)
        if not finite.all():
            out.nonfinite = float(np.sum(values[~finite]))
            values = values[finite]
        if values.size == 0:
            return out
        mantissa, exponent = np.frexp(values)  # values = mantissa * 2**exponent exactly
        m = (mantissa * float(1 << _MANTISSA_BITS)).astype(np.int64)  # exact, |m| < 2^53
        high = m >> _HALF  # m = high * 2^26 + low with 0 <= low < 2^26
        low = m - (high << _HALF)
        order = np.argsort(exponent, kind="stable")
        exponents, starts = np.unique(exponent[order], return_index=True)
        high_sums = np.add.reduceat(high[order], starts)
        low_sums = np.add.reduceat(low[order], starts)
        for e, h, lo in zip(exponents.tolist(), high_sums.tolist(), low_sums.tolist()):
            out.by_exponent[e] = (h << _HALF) + lo
        return out

    def __add__(self, other: ExactSum) -> ExactSum:
        merged = dict(self.by_exponent)
        for e, m in other.by_exponent.items():
            merged[e] = merged.get(e, 0) + m
        return ExactSum(self.count + other.count, merged, self.nonfinite + other.nonfinite)

    def total(self) -> Fraction:
        """The exact sum of the finite values."""
        return sum(
            (
                Fraction(m) * Fraction(2) ** (e - _MANTISSA_BITS)
                for e, m in self.by_exponent.items()
            ),
            Fraction(0),
        )

    def mean(self) -> float:
        """The mean, correctly rounded to float64 (nan for no values)."""
        if self.count == 0:
            return float("nan")
        if not np.isfinite(self.nonfinite):  # an inf or nan value
            return self.nonfinite
        return float(self.total() / self.count)
