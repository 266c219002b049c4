"""Side-by-side timing of interpreters: rounds alternate between the candidates and each keeps
its fastest round, so that a noisy neighbour on a shared machine penalises none of them alone."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from hybrid_pruning import runtime


def invoker(model: bytes, x: np.ndarray, ours: bool, threads: int, kernel: str = ""
            ) -> Callable[[], None]:
    """A warmed-up interpreter's invoke on input x (batch resized to x's); ours=False is the
    stock interpreter (XNNPACK), ours=True adds our delegate."""
    it = runtime.make_interpreter(model_content=model, num_threads=threads, with_ops=ours,
                                  kernel=kernel if ours else "")
    inp = it.get_input_details()[0]["index"]
    it.resize_tensor_input(inp, x.shape)
    it.allocate_tensors()
    it.set_tensor(inp, x)
    it.invoke()  # warm up (and the first-run allocations)
    return it.invoke


def _round(invoke: Callable[[], None], min_seconds: float) -> float:
    runs, start = 0, time.perf_counter()
    while True:
        invoke()
        runs += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds and runs >= 3:
            return elapsed / runs


def best_times(*invokes: Callable[[], None], rounds: int = 5, min_seconds: float = 0.05
               ) -> list[float]:
    """Seconds per invoke of each candidate: the best of `rounds` alternating rounds."""
    best = [float("inf")] * len(invokes)
    for _ in range(rounds):
        for i, invoke in enumerate(invokes):
            best[i] = min(best[i], _round(invoke, min_seconds))
    return best
