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
# Values per bincount: its float64 running sums of parts of magnitude <= 2^27 stay below
# 2^52, so every partial sum is an integer float64 holds exactly.
_BINCOUNT_VALUES = 1 << 25


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
        # The integer m = mantissa * 2^53 (|m| < 2^53) split exactly as high * 2^26 + low,
        # 0 <= low < 2^26, in float64 and in place (scaling by powers of two and taking the
        # fractional part are exact; each fresh array costs its page faults).
        scaled = np.multiply(mantissa, 2.0 ** (_MANTISSA_BITS - _HALF), out=mantissa)
        high = np.floor(scaled)  # |high| <= 2^27
        low = np.subtract(scaled, high, out=scaled)  # the fractional part, in [0, 1)
        low *= 2.0**_HALF
        # Parts summed per exponent by bincount, not by sorting on the exponent (an argsort
        # of the values was most of the features step's time); exact, see _BINCOUNT_VALUES.
        e_min = int(exponent.min())
        slot = exponent.astype(np.intp)  # bincount's index type: no copy per call
        slot -= e_min  # [n] in 0 .. span - 1
        span = int(slot.max()) + 1
        present = np.bincount(slot, minlength=span) > 0
        high_sums = np.zeros(span, dtype=np.int64)
        low_sums = np.zeros(span, dtype=np.int64)
        for start in range(0, values.size, _BINCOUNT_VALUES):
            part = slice(start, start + _BINCOUNT_VALUES)
            for sums, parts in ((high_sums, high), (low_sums, low)):
                counted = np.bincount(slot[part], weights=parts[part], minlength=span)
                sums += counted.astype(np.int64)
        for i in np.flatnonzero(present).tolist():
            out.by_exponent[i + e_min] = (int(high_sums[i]) << _HALF) + int(low_sums[i])
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
