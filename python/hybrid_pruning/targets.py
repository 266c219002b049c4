"""What runs where and what it costs: for a conv layer and a way of running it (TFLite's
builtin CONV_2D, which uses XNNPACK's dense kernels, or HybridSparseConv2D at some weight
sparsity and block size), its latency on the target.

The host is measured, not modelled: single-layer models of the layer's own shape, with random
weights at a grid of sparsities, are timed in the interpreter side by side (our op against the
builtin, in one process), and latency at other sparsities is interpolated (log-linear) between
grid points. Measurements are cached on disk, keyed by the CPU, the thread count and the
delegate library's contents, so a second run costs nothing and a rebuilt kernel library is
measured afresh.

The vector kernels (AVX2, AVX-512, NEON, RVV) skip zero weights but not zero activations, so on
them activation thresholds buy no time: ACTIVATION_PAYS says so for the optimiser.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import platform

import numpy as np
from absl import logging

from hybrid_pruning import graph, op_format, runtime, timing, tflite_model

SPARSITY_GRID = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
ACTIVATION_PAYS = False  # on the host's vector kernels (see the module docstring)
_ROUNDS, _MIN_SECONDS = 3, 0.01


@dataclasses.dataclass(frozen=True)
class ConvShape:
    """One conv as the runtime sees it (batch 1): for a SeparableConv2D, its pointwise half."""

    in_h: int
    in_w: int
    in_c: int
    out_c: int
    kh: int
    kw: int
    stride: tuple[int, int]
    dilation: tuple[int, int]
    padding: str

    def key(self) -> str:
        return (f"{self.in_h}x{self.in_w}x{self.in_c}-{self.kh}x{self.kw}-{self.out_c}"
                f"-s{self.stride[0]}x{self.stride[1]}-d{self.dilation[0]}x{self.dilation[1]}"
                f"-{self.padding}")

    @property
    def geometry(self) -> op_format.ConvGeometry:
        return op_format.ConvGeometry(self.kh, self.kw, self.in_c, self.out_c, *self.stride,
                                      *self.dilation, self.padding, "NONE")


def conv_shape(pl: graph.PrunableLayer) -> ConvShape:
    kh, kw, in_c, out_c = (int(d) for d in pl.kernel.shape)
    source = pl.layer.output if pl.separable else pl.layer.input
    h, w = (int(d) for d in source.shape[1:3])
    return ConvShape(h, w, in_c, out_c, kh, kw, tuple(pl.strides), tuple(pl.dilations),
                     pl.padding)


def _cpu_key() -> str:
    model, flags = platform.machine(), ""
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
        model = next((l.split(":", 1)[1].strip() for l in text.splitlines()
                      if l.startswith("model name")), model)
        flags = " ".join(f for f in ("avx2", "avx512f", "asimd") if f" {f}" in text)
    except OSError:
        pass
    return f"{model} [{flags}]"


def _library_digest() -> str:
    return hashlib.sha256(pathlib.Path(runtime.delegate_path()).read_bytes()).hexdigest()[:16]


def _cache_dir() -> pathlib.Path:
    base = os.environ.get("HYBRID_PRUNING_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tf-hybrid-pruning")
    return pathlib.Path(base) / "latency"


def random_filter(rng: np.random.Generator, shape: ConvShape, sparsity: float,
                  block: int) -> np.ndarray:
    """OHWI weights with `sparsity` zeros, one pattern per block of output channels."""
    w = rng.standard_normal((shape.out_c, shape.kh, shape.kw, shape.in_c)).astype(np.float32)
    blocks = -(-shape.out_c // block)
    keep = rng.random((blocks, shape.kh, shape.kw, shape.in_c)) >= sparsity
    return w * np.repeat(keep, block, axis=0)[:shape.out_c]


class HostProfile:
    """Measured latencies on this machine (batch 1)."""

    name = "host"

    def __init__(self, threads: int = 1, cache_dir: str | os.PathLike | None = None):
        self.threads = threads
        self.cpu = _cpu_key()
        self.library = _library_digest()
        directory = pathlib.Path(cache_dir) if cache_dir else _cache_dir()
        tag = hashlib.sha256(f"{self.cpu}|{self.library}|{threads}".encode()).hexdigest()[:16]
        self.path = directory / f"host-{tag}.json"
        self._table: dict = {}
        try:
            stored = json.loads(self.path.read_text())
            if stored.get("library") == self.library and stored.get("cpu") == self.cpu:
                self._table = stored["layers"]
        except (OSError, ValueError, KeyError):
            pass
        self.measured = 0  # shapes measured by this instance (0: all came from the cache)

    def _entry(self, shape: ConvShape, block: int) -> dict:
        key = f"{shape.key()}-b{block}"
        if key not in self._table:
            self._table[key] = self._measure(shape, block)
            self.measured += 1
            self._save()
        return self._table[key]

    def _measure(self, shape: ConvShape, block: int) -> dict:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((1, shape.in_h, shape.in_w, shape.in_c)).astype(np.float32)
        bias = rng.standard_normal(shape.out_c).astype(np.float32)
        dense = random_filter(rng, shape, 0.0, 1)
        base = tflite_model.single_conv_model(x.shape, dense, bias, shape.geometry, "builtin")
        invokes = [timing.invoker(base, x, ours=False, threads=self.threads)]
        for s in SPARSITY_GRID:
            w = random_filter(rng, shape, s, block)
            ours = tflite_model.single_conv_model(x.shape, w, bias, shape.geometry, "hybrid",
                                                  block_size=block)
            invokes.append(timing.invoker(ours, x, ours=True, threads=self.threads))
        times = timing.best_times(*invokes, rounds=_ROUNDS, min_seconds=_MIN_SECONDS)
        logging.info("measured %s block %d: builtin %.3g s, ours %s", shape.key(), block,
                     times[0], times[1:])
        return {"builtin": times[0], "ours": times[1:]}

    def _save(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps({"cpu": self.cpu, "library": self.library,
                                       "threads": self.threads, "layers": self._table}))
            os.replace(tmp, self.path)
        except OSError as e:  # a cache that cannot be written only costs time
            logging.warning("latency cache %s not written: %s", self.path, e)

    def builtin(self, shape: ConvShape) -> float:
        """Seconds of the builtin CONV_2D (dense, XNNPACK)."""
        return float(self._entry(shape, 1)["builtin"])

    def ours(self, shape: ConvShape, sparsity: float, block: int = 1) -> float:
        """Seconds of HybridSparseConv2D at this weight sparsity, interpolated."""
        times = np.log(np.asarray(self._entry(shape, block)["ours"], np.float64))
        s = float(np.clip(sparsity, SPARSITY_GRID[0], SPARSITY_GRID[-1]))
        return float(np.exp(np.interp(s, SPARSITY_GRID, times)))
