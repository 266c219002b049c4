"""The bisection both per-layer techniques use to spend a layer's error budget."""

from __future__ import annotations

from typing import Callable, TypeVar

T = TypeVar("T")


def largest_within_budget(evaluate: Callable[[float], T], error: Callable[[T], float],
                          upper: float, budget: float, iterations: int) -> T:
    """The candidate at the largest level in [0, upper] whose error stays within `budget`
    (level 0, doing nothing, is always accepted); assumes error grows with the level."""
    best = evaluate(0.0)
    top = evaluate(upper)
    if error(top) <= budget:
        return top
    lo, hi = 0.0, upper
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        candidate = evaluate(mid)
        if error(candidate) <= budget:
            lo, best = mid, candidate
        else:
            hi = mid
    return best
