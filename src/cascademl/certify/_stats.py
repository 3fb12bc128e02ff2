"""Exact binomial tests and Clopper-Pearson bounds for 0/1 losses."""

from __future__ import annotations

import math

from scipy.special import bdtr, betaincinv

__all__ = ["binomial_p_value", "lower_confidence_bound", "required_test_size"]


def binomial_p_value(errors: int, n: int, alpha: float) -> float:
    """P-value of the null hypothesis "the risk is at least ``alpha``" after ``errors`` in ``n``.

    It is ``P(Binom(n, alpha) <= errors)`` (``scipy.special.bdtr``): exact for any ``n``
    (no normal approximation), and super-uniform under the null, so rejecting when it is at
    most ``delta`` has error probability at most ``delta``. With no samples there is no
    evidence: the p-value is 1.

    Examples:
        >>> round(binomial_p_value(0, 59, 0.05), 4)  # 0.95 ** 59
        0.0485
        >>> binomial_p_value(3, 0, 0.05)
        1.0
    """
    if n <= 0:
        return 1.0
    return float(bdtr(errors, n, alpha))


def lower_confidence_bound(successes: int, n: int, delta: float) -> float:
    """One-sided Clopper-Pearson lower bound of a success probability at level ``1 - delta``.

    The ``delta`` quantile of ``Beta(successes, n - successes + 1)`` (``scipy.special.betaincinv``).

    The bound is at or above ``target`` exactly when ``binomial_p_value(n - successes, n,
    1 - target) <= delta``: the test and the bound are the same statement. 0 when no sample
    succeeded (or there is none).

    Examples:
        >>> round(lower_confidence_bound(100, 100, 0.05), 4)  # 0.05 ** (1 / 100)
        0.9705
        >>> lower_confidence_bound(0, 10, 0.05)
        0.0
    """
    if n <= 0 or successes <= 0:
        return 0.0
    return float(betaincinv(successes, n - successes + 1, delta))


def required_test_size(target: float, delta: float) -> int:
    """The fewest samples on which zero errors certify ``target`` at level ``delta``.

    The smallest ``n`` with ``binomial_p_value(0, n, 1 - target) = target ** n <= delta``;
    with fewer testing samples nothing can be certified, whatever the models do.

    Examples:
        >>> required_test_size(0.95, 0.05)
        59
        >>> required_test_size(0.99, 0.05)
        299
    """
    alpha = 1.0 - target
    n = max(1, math.ceil(math.log(delta) / math.log1p(-alpha)))
    while binomial_p_value(0, n, alpha) > delta:
        n += 1
    while n > 1 and binomial_p_value(0, n - 1, alpha) <= delta:
        n -= 1
    return n
