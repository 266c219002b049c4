"""What runs where and what it costs: for a conv layer and a way of running it (TFLite's
builtin CONV_2D, which uses XNNPACK's dense kernels, or HybridSparseConv2D at some weight
sparsity and block size), its latency on the target.

The host is measured, not modelled: single-layer models of the layer's own shape, with random
weights at a grid of sparsities, are timed in the interpreter side by side (our op against the
builtin, in one process), and latency at other sparsities is interpolated (log-linear) between
grid points. Measurements are cached on disk, keyed by the CPU, the thread count and the
delegate library's contents, so a second run costs nothing and a rebuilt kernel library is
measured afresh. With several thread counts (the default: one and all cores) our op is priced
at its worst ratio to the builtin over them.

Targets that cannot run here (arm64, riscv64, the scalar `generic` device) are modelled, not
measured: ModelledProfile derives a layer's latency from what our microkernels execute (per
nonzero weight block: vector loads of a tile of input pixels, one broadcast per row, one FMA
per row and vector; per tile and channel an epilogue; the input packing and output transposes)
and XNNPACK's dense conv from its MACs at a fraction of peak, both priced with a documented
core's instruction costs (CORES; ../shared/DEVICES.md gives their sources). The same model of
the host's ISA is checked against the host's measurements (benchmarks/results/) so that its
error is known.

The vector kernels (AVX2, AVX-512, NEON, RVV) skip zero weights but not zero activations, so on
them activation thresholds buy no time; the portable reference kernel (the `generic` target, a
scalar core) skips both. A profile's `activation_pays` says which for the optimiser.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pathlib
import platform
import re

import numpy as np
from absl import logging

from hybrid_pruning import graph, op_format, runtime, timing

SPARSITY_GRID = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
_ROUNDS, _MIN_SECONDS = 3, 0.01
# Several threads: a run's time varies with how soon the pools' workers wake, and a table
# re-measured on the same machine moved by up to 2x on small layers; twice the rounds give
# the best-of more chances (codesign.md: the end point depends on these tables).
_ROUNDS_THREADED = 6


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
    text = cpuinfo()
    flags = " ".join(f for f in ("avx2", "avx512f", "asimd") if f" {f}" in text)
    return f"{cpu_model()} [{flags}]"


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else the machine type."""
    return next((l.split(":", 1)[1].strip() for l in cpuinfo().splitlines()
                 if l.startswith("model name")), platform.machine())


def cpuinfo() -> str:
    """/proc/cpuinfo, or '' where there is none."""
    try:
        return pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def _library_digest() -> str:
    return hashlib.sha256(pathlib.Path(runtime.delegate_path()).read_bytes()).hexdigest()[:16]


def _cache_dir() -> pathlib.Path:
    base = os.environ.get("HYBRID_PRUNING_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tf-hybrid-pruning")
    return pathlib.Path(base) / "latency"


def random_filter(rng: np.random.Generator, shape: ConvShape, sparsity: float,
                  block: int, input_groups: bool = False) -> np.ndarray:
    """OHWI weights with `sparsity` zeros, one pattern per block of output channels and
    input channel of a tap (with `input_groups`, per group of 4 input channels: the int8
    op's unit)."""
    w = rng.standard_normal((shape.out_c, shape.kh, shape.kw, shape.in_c)).astype(np.float32)
    group = 4 if input_groups else 1
    blocks = -(-shape.out_c // block)
    keep = rng.random((blocks, shape.kh, shape.kw, -(-shape.in_c // group))) >= sparsity
    keep = np.repeat(np.repeat(keep, block, axis=0)[:shape.out_c], group, axis=-1)
    return w * keep[..., :shape.in_c]


def timing_layer_data(rng: np.random.Generator, shape: ConvShape, dtype: str
                      ) -> tuple[np.ndarray, np.ndarray, dict | None]:
    """The input, bias and (int8) quantization the latency tables time a layer with: int8
    ops on int8 weights, quantized as the converter does."""
    x = rng.standard_normal((1, shape.in_h, shape.in_w, shape.in_c)).astype(np.float32)
    bias = rng.standard_normal(shape.out_c).astype(np.float32)
    if dtype != "int8":
        return x, bias, None
    return (rng.integers(-128, 128, x.shape).astype(np.int8),
            rng.integers(-5000, 5000, shape.out_c).astype(np.int32),
            {"input": (0.02, -5), "output": (0.05, -128),
             "filter_scales": np.full(shape.out_c, 1e-2, np.float32)})


def timing_weights(w: np.ndarray, dtype: str) -> np.ndarray:
    """A random_filter as the latency tables time it (int8: at timing_layer_data's scales)."""
    return np.clip(np.round(w * 40), -127, 127).astype(np.int8) if dtype == "int8" else w


class _MeasuredTable:
    """One thread count's measurements (batch 1), cached on disk."""

    def __init__(self, cpu: str, library: str, threads: int, kernel: str,
                 directory: pathlib.Path, dtype: str = "float32"):
        self.threads = threads
        self.kernel = kernel
        self.cpu = cpu
        self.library = library
        self.dtype = dtype
        key = f"{cpu}|{library}|{threads}|{kernel}" + ("" if dtype == "float32" else f"|{dtype}")
        tag = hashlib.sha256(key.encode()).hexdigest()[:16]
        self.path = directory / f"host-{tag}.json"
        self._table: dict = {}
        try:
            stored = json.loads(self.path.read_text())
            if stored.get("library") == library and stored.get("cpu") == cpu:
                self._table = stored["layers"]
        except (OSError, ValueError, KeyError):
            pass
        self.measured = 0

    def entry(self, shape: ConvShape, block: int) -> dict:
        key = f"{shape.key()}-b{block}"
        if key not in self._table:
            self._table[key] = self._measure(shape, block)
            self.measured += 1
            self._save()
        return self._table[key]

    def _measure(self, shape: ConvShape, block: int) -> dict:
        # Deferred: it imports TensorFlow, which prune's flag validators must not (their
        # messages come before the console is quieted).
        from hybrid_pruning import tflite_model

        rng = np.random.default_rng(0)
        x, bias, quant = timing_layer_data(rng, shape, self.dtype)

        def weights(sparsity: float, b: int) -> np.ndarray:
            return timing_weights(random_filter(rng, shape, sparsity, b,
                                                input_groups=self.dtype == "int8"), self.dtype)

        base = tflite_model.single_conv_model(x.shape, weights(0.0, 1), bias, shape.geometry,
                                              "builtin", int8=quant)
        invokes = [timing.invoker(base, x, ours=False, threads=self.threads)]
        for s in SPARSITY_GRID:
            ours = tflite_model.single_conv_model(x.shape, weights(s, block), bias,
                                                  shape.geometry, "hybrid",
                                                  block_size=block, int8=quant)
            invokes.append(timing.invoker(ours, x, ours=True, threads=self.threads,
                                          kernel=self.kernel))
        times = timing.best_times(*invokes, min_seconds=_MIN_SECONDS,
                                  rounds=_ROUNDS if self.threads == 1 else _ROUNDS_THREADED)
        logging.info("measured %s %s block %d, %d thread(s): builtin %.3g s, ours %s",
                     self.dtype, shape.key(), block, self.threads, times[0], times[1:])
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
        """The builtin's fastest over every entry of this shape (each block size's entry
        times it again; at two threads single runs vary with how soon XNNPACK's pool wakes)."""
        self.entry(shape, 1)
        prefix = f"{shape.key()}-b"
        return float(min(v["builtin"] for k, v in self._table.items() if k.startswith(prefix)))

    def ours(self, shape: ConvShape, sparsity: float, block: int) -> float:
        # More zeros never cost our kernel time and timing noise only ever adds time: a grid
        # point slower than a denser one is noise, and takes the denser one's time.
        times = np.log(np.minimum.accumulate(
            np.asarray(self.entry(shape, block)["ours"], np.float64)))
        s = float(np.clip(sparsity, SPARSITY_GRID[0], SPARSITY_GRID[-1]))
        return float(np.exp(np.interp(s, SPARSITY_GRID, times)))


def thread_counts(spec: str | int | tuple | list) -> tuple[int, ...]:
    """'1,all' -> (1, cores here); ints pass through. Raises ValueError naming the problem."""
    items = spec.split(",") if isinstance(spec, str) else list(
        spec if isinstance(spec, (tuple, list)) else [spec])
    out = []
    for item in items:
        text = str(item).strip()
        if text == "all":  # the cores this process may run on, not the machine's
            n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
                os.cpu_count() or 1)
        elif text.isdigit() and int(text) >= 1:
            n = int(text)
        else:
            raise ValueError(f"thread count '{text}' is not a positive integer or 'all'")
        if n not in out:
            out.append(n)
    if not out:
        raise ValueError("no thread count given")
    return tuple(out)


class HostProfile:
    """Measured latencies on this machine (batch 1), at one or more thread counts. `kernel`
    forces one of our kernel variants (e.g. "avx2" on an AVX-512 machine); "" is the one the
    delegate picks here.

    With several thread counts, our op is priced at its worst ratio to the builtin over them
    (in seconds of the first count): a layer goes to our op only where it is faster at every
    count the model may run with. XNNPACK's dense conv gains nearly linearly from a second
    core, while a small layer of ours does not (a second worker of ours costs a wake-up), so a
    model chosen at one thread alone can be slower than the original at two
    (benchmarks/results/codesign.md)."""

    activation_pays = False  # every kernel the delegate picks on a host is a vector kernel
    modelled = False

    def __init__(self, threads: int | tuple[int, ...] = 1,
                 cache_dir: str | os.PathLike | None = None, kernel: str = "",
                 name: str = "host", dtype: str = "float32"):
        """`dtype` "int8": the builtin int8 CONV_2D against our int8 op, whose blocks are
        groups of input channels (weight_pruning.block_scores)."""
        self.threads = thread_counts(threads)
        self.kernel = kernel
        self.name = name
        self.dtype = dtype
        self.cpu = _cpu_key()
        self.library = _library_digest()
        directory = pathlib.Path(cache_dir) if cache_dir else _cache_dir()
        self._tables = [_MeasuredTable(self.cpu, self.library, t, kernel, directory, dtype)
                        for t in self.threads]

    @property
    def measured(self) -> int:
        """Shapes measured by this instance (0: all came from the cache)."""
        return sum(t.measured for t in self._tables)

    def builtin(self, shape: ConvShape) -> float:
        """Seconds of the builtin CONV_2D (dense, XNNPACK) at the first thread count."""
        return self._tables[0].builtin(shape)

    def latency(self, shape: ConvShape, sparsity: float, block: int = 1,
                activation_sparsity: float = 0.0) -> float:
        """Predicted seconds of HybridSparseConv2D at the first thread count (what the
        report shows; `ours` is what the optimiser prices)."""
        del activation_sparsity
        return self._tables[0].ours(shape, sparsity, block)

    def ours(self, shape: ConvShape, sparsity: float, block: int = 1,
             activation_sparsity: float = 0.0) -> float:
        """Seconds of HybridSparseConv2D at this weight sparsity, interpolated (zero
        activations cost the vector kernels as much as any others); with several thread
        counts, the builtin's seconds times our worst ratio to it."""
        del activation_sparsity
        if len(self._tables) == 1:
            return self._tables[0].ours(shape, sparsity, block)
        ratio = max(t.ours(shape, sparsity, block) / t.builtin(shape) for t in self._tables)
        return ratio * self.builtin(shape)


@dataclasses.dataclass(frozen=True)
class Core:
    """Instruction costs of one core, in cycles per instruction (reciprocal throughput) at the
    vector width our microkernel for it uses. Sources: ../shared/DEVICES.md."""

    name: str
    ghz: float
    lanes: int  # fp32 lanes of one vector instruction of our microkernel
    fma: float  # cycles per vector FMA
    load: float  # cycles per vector load
    scalar_load: float  # cycles per broadcast / scalar load (weights, offsets)
    issue: float  # instructions per cycle
    in_order: bool  # loads and FMAs do not overlap: their cycles add up
    dense_efficiency: float  # fraction of FMA peak XNNPACK's dense conv reaches
    epilogue: float  # cycles per output vector: start value, clamp, store
    transpose: float  # cycles per float of input packing and output transpose
    overhead: float  # cycles per op invoke (dispatch, setup)


@dataclasses.dataclass(frozen=True)
class Microkernel:
    """Our microkernel's tiling on that ISA: the plugin's geometry (kernels/geometry.h)."""

    tile: int  # output positions per call
    max_rows: int  # rows of a block computed per pass over its nonzeros
    block_pass: int = 0  # positions per pass over a block's nonzeros (0: the tile); an
                         # unstructured filter's pass is the whole tile
    unstructured_tile: int = 0  # the tile of unstructured filters (0: the tile)


# The modelled RVV core's vector length (SpacemiT X60).
RVV_VLEN = 256


def _rvv_tile(vlen: int | None) -> int:
    """RVV's tile, float32 and int8 alike: one LMUL group of VLEN / 32 lanes."""
    return (vlen or RVV_VLEN) // 32 * runtime.kernel_geometry()["rvv"]["lmul"]


def microkernel(target: str, vlen: int | None = None) -> Microkernel:
    """The float32 microkernel a target's profile prices, read from the plugin's geometry:
    AVX2 computes blocks in passes of part of its tile and unstructured filters in its wide
    tile; RVV's tile is one LMUL group of VLEN / 32 lanes."""
    g = runtime.kernel_geometry()
    f32 = g["f32"]
    if target == "x86_64-avx2":
        return Microkernel(f32["avx2"]["tile"], f32["avx2"]["max_rows"], f32["avx2"]["pass"],
                           f32["avx2_wide"]["tile"])
    if target == "x86_64-avx512":
        return Microkernel(f32["avx512"]["tile"], f32["avx512"]["max_rows"])
    if target == "arm64-neon":
        return Microkernel(f32["neon"]["tile"], f32["neon"]["max_rows"])
    if target == "riscv64-rvv":
        return Microkernel(_rvv_tile(vlen), g["rvv"]["max_rows"])
    return Microkernel(1, 1)  # generic: the scalar reference

# x86: Zen 3 (AVX2: 2 FMA pipes x 256 bit, 2 FP loads/cycle) and Zen 4 (ZMM FMA takes a pipe
# two cycles, one 512-bit load per cycle assumed); arm64: Cortex-A76 (2 x 128-bit FMLA and
# loads per cycle, 4-wide, XNNPACK ~0.8 of peak); riscv64: SpacemiT X60 (VLEN 256, LMUL 4:
# vfmacc 4 cycles, vle32 8.6, vse32 ~10, in-order dual issue; XNNPACK's dense efficiency there
# is not published: 0.6 assumed); generic: a scalar in-order MCU-class core, one FMA and one
# load per cycle. Dense efficiency, epilogue, transpose and overhead of the x86 cores are
# fitted (relative least squares) to an AVX-512 host's one-thread measurements of the test
# and benchmark models' layers, in cycles of the clock measured there (kernels/clock.h; a
# VM's /proc/cpuinfo gives the nominal clock); the error: benchmarks/results/codesign.md, "The
# analytic model". The other cores keep an earlier x86 fit's overhead and transpose costs,
# scaled to their load throughput.
CORES = {
    "x86_64-avx2": Core("AMD Zen 3", 3.8, 8, 0.5, 0.5, 0.5, 4, False, 0.72, 5, 0.69, 3000),
    "x86_64-avx512": Core("AMD Zen 4", 4.5, 16, 1.0, 1.0, 0.5, 4, False, 0.72, 5, 0.69, 3000),
    "arm64-neon": Core("Arm Cortex-A76", 2.4, 4, 0.5, 0.5, 0.5, 4, False, 0.8, 3, 1.0, 2000),
    "riscv64-rvv": Core("SpacemiT X60", 1.6, 32, 4.0, 8.6, 1.0, 2, False, 0.6, 18, 2.0, 3000),
    "generic": Core("scalar in-order core", 0.5, 1, 1.0, 1.0, 1.0, 1, True, 0.33, 0, 2.0, 500),
}
TARGETS = ("host", *CORES)


@dataclasses.dataclass(frozen=True)
class Int8Kernel:
    """Our int8 (qs8) microkernel on that ISA (tflite_ops/kernels/qs8_<isa>.cc), counted in
    the core's vector instructions, and XNNPACK's dense int8 rate there. A vector holds
    `Core.lanes` 32-bit lanes, one output position each; integer vector instructions are
    priced as the core's FMA (the same pipes). Its tiles are the plugin's (int8_tiles)."""

    family: str  # its qs8 family in the plugin's geometry ("" : RVV's, from VLEN; generic)
    ops_per_vector: int  # vector instructions per nonzero word of 4 weights and vector,
                         # the input load included
    requantize: int  # vector instructions per output vector: TFLite's requantization, clamp,
                     # narrowing store
    dense_macs_per_cycle: float  # XNNPACK's int8 conv at peak: its dot instruction's MACs
                                 # per cycle
    dense_efficiency: float  # the fraction of that peak it reaches
    vector_bytes: int = 0  # of one input load at a word offset (0: loads never split lines)
    block_efficiency: float = 1.0  # the block kernel's fraction of its bound, where it has one
    broadcast_per_dot: bool = False  # its block kernel loads a weight word per dot product
    # Its block kernel: instructions per input vector done once for the block's channels (the
    # load, and AVX2's split into even and odd bytes), and per channel and nonzero on the
    # weight word (AVX2's sign extension into pairs).
    block_shared_ops: int = 1
    block_weight_ops: int = 0
    # XNNPACK's dense int8 conv per output vector besides its MACs: its float requantization
    # and store (convert, multiply, clamp, convert back, zero point, narrow, store).
    dense_requantize: float = 8.0


def int8_tiles(target: str, vlen: int | None = None, blocks: bool = False) -> tuple[int, ...]:
    """The tiles our int8 kernel for a target offers (the plan picks one per layer);
    `blocks`: its block kernel's, for filters in blocks of int8_block_rows() output channels
    (none: the plan runs them row by row)."""
    family = INT8_KERNELS[target].family
    if family:
        return tuple(runtime.kernel_geometry()["qs8"][family]
                     ["block_tiles" if blocks else "tiles"])
    if blocks:
        return ()
    if target == "riscv64-rvv":
        return (_rvv_tile(vlen),)
    return (1,)


def int8_block_rows() -> int:
    """Output channels per block of the int8 block kernels."""
    return int(runtime.kernel_geometry()["qs8_block_rows"])


# Instruction counts are our kernels' (qs8_avx2.cc: load, and, shift, 2 vpmaddwd, 2 adds,
# its block kernel the first three once per vector and 3 shifts per weight word;
# qs8_avx512vnni.cc: load, vpdpbusd; qs8_neondot.cc: ld1, sdot; qs8_rvv.cc: vle32, 7 shifts,
# 4 vmacc.vx; the block kernels: a load per vector, then per channel a vpdpbusd with its
# weight broadcast from memory, or an sdot by element). XNNPACK's dense int8 peaks: AVX2
# vpmaddwd (16 MACs, 2/cycle on Zen 3), Zen 4 vpdpbusd zmm (64 MACs, one per cycle on two
# 256-bit pipes), A76 sdot (16 MACs, 2/cycle: Arm's optimization guides give SDOT
# throughput 2 on V0/V1). RVV has no int8 dot product: XNNPACK's widening multiply-adds
# on 16-bit lanes are assumed at twice the fp32 FMA rate (not measured, not published).
# The generic scalar core: one MAC per cycle. Dense
# efficiency: the float fits' (CORES) except AVX-512, fitted to this kind of host's int8
# measurements (benchmarks/results/conv_bench_int8.md, "modelled ratio"). A tap's input
# vector starts at any word, so a load of B bytes crosses a 64-byte line with probability
# (B - 4) / 64 and then takes two load slots (RVV's measured vle32 costs include that).
# AVX-512's requantization (after a ReLU: one 64-bit floor, qs8_avx512vnni.cc) is about 11
# instructions with its narrowing store, counted as 5 FMA slots: its adds, shifts and
# blends issue two per cycle on Zen 4 where a zmm FMA issues one (fitted, as the efficiency,
# to conv_bench_int8.md); AVX2's about 12. Rows left without a nonzero skip it. XNNPACK's
# dense conv also pays its float requantization per output vector (dense_requantize):
# without it the model had XNNPACK far faster than conv_bench_int8.md measures on 1x1
# layers of few input channels, where that is much of its time. Its block kernel reaches about 0.8 of its vpdpbusd
# bound (fitted likewise). AVX2's block kernel does the rows kernel's ALU work less only its
# split, yet measures faster than that (conv_bench_int8.md's avx2 column, 4 x 4 blocks
# against groups): the rows kernel loads each input vector once per channel and almost half
# of those loads cross two cache lines, which costs more than the load slot counted here; its
# efficiency above 1 is that difference, fitted.
INT8_KERNELS = {
    "x86_64-avx2": Int8Kernel("avx2", 7, 12, 32.0, 0.72, 32, 1.2, block_shared_ops=3,
                              block_weight_ops=3),
    "x86_64-avx512": Int8Kernel("avx512vnni", 2, 5, 64.0, 0.97, 64, 0.8, True),
    "arm64-neon": Int8Kernel("neondot", 2, 12, 32.0, 0.8, 16),
    "riscv64-rvv": Int8Kernel("", 12, 14, 16.0, 0.6),
    "generic": Int8Kernel("", 0, 0, 1.0, 0.33, dense_requantize=0.0),
}


class ModelledProfile:
    """Latencies derived from our kernels' instruction counts and a core's documented costs
    (batch 1, one thread). Labelled 'modelled' wherever shown."""

    modelled = True

    def __init__(self, target: str, vlen: int | None = None, ghz: float | None = None,
                 dtype: str = "float32"):
        """`dtype` "int8": the builtin int8 CONV_2D (XNNPACK's) against our int8 op, whose
        blocks are groups of 4 input channels (INT8_KERNELS)."""
        core, int8 = CORES[target], INT8_KERNELS[target]
        if target == "riscv64-rvv" and vlen:
            # Same datapath, longer vectors: an LMUL=4 instruction covers vlen/8 lanes and
            # takes proportionally longer, and so does the dense int8 rate assumed there.
            scale = vlen / RVV_VLEN
            core = dataclasses.replace(core, lanes=vlen // 8, fma=core.fma * scale,
                                       load=core.load * scale, epilogue=core.epilogue * scale)
            int8 = dataclasses.replace(int8,
                                       dense_macs_per_cycle=int8.dense_macs_per_cycle * scale)
        if ghz:
            core = dataclasses.replace(core, ghz=ghz)
        self.target, self.core, self.int8 = target, core, int8
        self.kernel = microkernel(target, vlen)
        self.int8_tiles = int8_tiles(target, vlen)
        self.int8_block_tiles = int8_tiles(target, vlen, blocks=True)
        self.dtype = dtype
        self.name = target + (f":vlen={vlen}" if vlen else "")
        self.activation_pays = target == "generic"

    @staticmethod
    def _positions(shape: ConvShape) -> tuple[int, int]:
        """(output positions, positions the kernel computes, wasted lanes included)."""
        oh, ow = _output_hw(shape)
        if shape.kh == shape.kw == 1 and shape.stride == (1, 1):
            return oh * ow, oh * ow
        pad_w = max((ow - 1) * shape.stride[1] + (shape.kw - 1) * shape.dilation[1] + 1
                    - shape.in_w, 0)
        wq = -(-(shape.in_w + pad_w) // shape.stride[1])
        return oh * ow, oh * wq

    def builtin(self, shape: ConvShape) -> float:
        c = self.core
        out, _ = self._positions(shape)
        macs = out * shape.kh * shape.kw * shape.in_c * shape.out_c
        if self.dtype == "int8":
            k = self.int8
            cycles = macs / k.dense_macs_per_cycle / k.dense_efficiency \
                + out * shape.out_c / c.lanes * k.dense_requantize * c.fma + c.overhead
        else:
            cycles = macs * c.fma / c.lanes / c.dense_efficiency + c.overhead
        return cycles / (c.ghz * 1e9)

    def _ours_int8(self, shape: ConvShape, sparsity: float, block: int = 1) -> float:
        """Our int8 op: per nonzero word (4 weights of a group of input channels) and tile, a
        weight broadcast, an offset load and ops_per_vector per vector; per tile and channel
        the requantization; the input packed into words and the int8 results transposed.
        A block kernel's nonzero (`block` channels' words) loads each input vector once for
        its `block` dot products (and its weights per dot product where broadcast_per_dot,
        else once); without one, blocks run as rows."""
        c, k = self.core, self.int8
        out, computed = self._positions(shape)
        groups = -(-shape.in_c // 4)
        blocks = -(-shape.out_c // block)
        nonzero = (1.0 - sparsity) * shape.kh * shape.kw * groups * blocks
        if self.target == "generic":
            # The reference kernel: per output position, per nonzero word 4 MACs and 2 loads;
            # per output its requantization (about 10 instructions).
            cycles = out * (nonzero * block * 6 + shape.out_c * 10) + c.overhead
            return cycles / (c.ghz * 1e9)
        block_kernel = block == int8_block_rows() and bool(self.int8_block_tiles)
        rows = block if block_kernel else 1
        if not block_kernel:
            nonzero *= block
        # The plan's choice (qs8_conv_plan.cc): the least work per nonzero, a broadcast plus a
        # load and a dot product per vector of every call.
        tiles_offered = self.int8_block_tiles if block_kernel else self.int8_tiles
        tile = min(reversed(tiles_offered),
                   key=lambda t: math.ceil(computed / t) * (1 + 2 * t / c.lanes))
        vecs = tile // c.lanes
        split = (k.vector_bytes - 4) / 64 if k.vector_bytes else 0.0
        oh, ow = _output_hw(shape)
        if (shape.kh, shape.kw, shape.stride) == (1, 1, (1, 1)) and k.vector_bytes and \
                oh * ow * 4 % k.vector_bytes == 0:
            # The plan starts the packed input and every tile on a cache line, so a stride-1
            # 1x1 conv's taps, whole planes apart, load whole vectors (qs8_conv_plan.cc).
            split = 0.0
        # The weight loads of a nonzero: a broadcast, or in a block kernel one per dot
        # product (VNNI's memory broadcasts) or one vector of the block's words (NEON).
        broadcasts = (vecs * rows if k.broadcast_per_dot else 1) if block_kernel else 1
        loads = vecs * c.load * (1 + split) + (1 + broadcasts) * c.scalar_load
        shared = k.block_shared_ops if block_kernel else 1
        weight_ops = rows * k.block_weight_ops if block_kernel else 0
        alu = (vecs * (shared - 1 + rows * (k.ops_per_vector - shared)) + weight_ops) * c.fma
        instructions = vecs * (shared + rows * (k.ops_per_vector - shared)) + 3 + rows + \
            weight_ops
        bound = loads + alu if c.in_order else max(loads, alu)
        per_nonzero = max(bound, instructions / c.issue) / (
            k.block_efficiency if block_kernel else 1.0)
        tiles = math.ceil(computed / tile)
        # Rows left without a nonzero are constants the plan writes once: no requantization.
        # Their share, were the pruned blocks spread at random: sparsity ** (blocks per row).
        empty = sparsity ** (shape.kh * shape.kw * groups)
        epilogue = blocks * block * vecs * k.requantize * c.fma * (1.0 - empty)
        # Packing moves a word per 4 input channels, the byte transpose 16 bytes per vector
        # op where the float transpose moves one float per lane.
        packing = (shape.in_h * shape.in_w * groups + out * shape.out_c / 4) * c.transpose
        cycles = tiles * (nonzero * per_nonzero + epilogue) + packing + c.overhead
        return cycles / (c.ghz * 1e9)

    def ours(self, shape: ConvShape, sparsity: float, block: int = 1,
             activation_sparsity: float = 0.0) -> float:
        if self.dtype == "int8":
            return self._ours_int8(shape, sparsity, block)
        c, k = self.core, self.kernel
        out, computed = self._positions(shape)
        cols = shape.kh * shape.kw * shape.in_c
        blocks = -(-shape.out_c // block)
        nonzero_blocks = (1.0 - sparsity) * cols * blocks
        if self.target == "generic":
            # The reference kernel: per output position and patch input, a load and a test;
            # per nonzero input, for each nonzero weight of its column, a load of the weight
            # and of the accumulator, an FMA and a store.
            density = 1.0 - activation_sparsity
            per_position = cols * 2 + density * nonzero_blocks * (1 + 3 * block) \
                + shape.out_c * 2
            cycles = out * per_position + c.overhead
            return cycles / (c.ghz * 1e9)
        tile = k.unstructured_tile if block == 1 and k.unstructured_tile else k.tile
        pass_lanes = k.block_pass if block > 1 and k.block_pass else tile
        vecs = pass_lanes // c.lanes
        passes = [min(k.max_rows, block - r) for r in range(0, block, k.max_rows)]
        passes *= tile // pass_lanes
        per_nonzero = 0.0
        for rows in passes:
            loads = vecs * c.load + (rows + 1) * c.scalar_load
            fmas = rows * vecs * c.fma
            instructions = vecs + rows + 1 + rows * vecs + 2
            bound = loads + fmas if c.in_order else max(loads, fmas)
            per_nonzero += max(bound, instructions / c.issue)
        tiles = math.ceil(computed / tile)
        epilogue = blocks * block * (tile // c.lanes) * c.epilogue
        packing = (shape.in_h * shape.in_w * shape.in_c + out * shape.out_c) * c.transpose
        cycles = tiles * (nonzero_blocks * per_nonzero + epilogue) + packing + c.overhead
        return cycles / (c.ghz * 1e9)


def _output_hw(shape: ConvShape) -> tuple[int, int]:
    def size(n, k, s, d):
        if shape.padding == "SAME":
            return -(-n // s)
        return (n - (k - 1) * d - 1) // s + 1

    return (size(shape.in_h, shape.kh, shape.stride[0], shape.dilation[0]),
            size(shape.in_w, shape.kw, shape.stride[1], shape.dilation[1]))


def host_isa() -> str:
    """The x86 target name of this machine's best ISA our kernels use, or '' if none."""
    text = cpuinfo()
    if platform.machine() not in ("x86_64", "AMD64"):
        return ""
    if " avx512f" in text:
        return "x86_64-avx512"
    return "x86_64-avx2" if " avx2" in text else ""


def host_ghz() -> float | None:
    """The clock the kernels run at, measured (runtime.clock_ghz); else what /proc/cpuinfo
    reports, which on a VM is the nominal clock, not the boost clock."""
    from hybrid_pruning import runtime

    measured = runtime.clock_ghz()
    if measured > 0:
        return measured
    return reported_ghz()


def reported_ghz() -> float | None:
    """/proc/cpuinfo's clock."""
    mhz = re.search(r"^cpu MHz\s*:\s*([0-9.]+)", cpuinfo(), re.M)
    return float(mhz.group(1)) / 1e3 if mhz else None


def parse_target(spec: str) -> tuple[str, int | None]:
    """'riscv64-rvv:vlen=256' -> ('riscv64-rvv', 256); raises ValueError naming the problem."""
    name, _, options = spec.strip().partition(":")
    if name not in TARGETS:
        raise ValueError(f"unknown target '{name}' (known: {', '.join(TARGETS)})")
    vlen = None
    if options:
        m = re.fullmatch(r"vlen=(\d+)", options)
        if name != "riscv64-rvv" or not m:
            raise ValueError(f"target '{spec}': only riscv64-rvv takes an option, vlen=N")
        vlen = int(m.group(1))
        if vlen < 128 or vlen & (vlen - 1):
            raise ValueError(f"target '{spec}': vlen must be a power of two >= 128")
    return name, vlen


def file_tag(spec: str) -> str:
    """A target's name as it goes into a file name: 'riscv64-rvv:vlen=256' ->
    'riscv64-rvv-vlen256'."""
    return spec.replace(":vlen=", "-vlen")


def profile_for(spec: str, threads: int | tuple[int, ...] = 1, dtype: str = "float32"):
    """The profile of a target: the host and x86 ISAs this machine has are measured (an x86
    target runs our kernel of that ISA here, int8 included); the rest are modelled."""
    name, vlen = parse_target(spec)
    if name == "host":
        return HostProfile(threads, dtype=dtype)
    have = host_isa()
    if name in ("x86_64-avx2", "x86_64-avx512") and have and (
            name == "x86_64-avx2" or have == name):
        return HostProfile(threads, kernel=name.split("-")[1], name=name, dtype=dtype)
    return ModelledProfile(name, vlen, dtype=dtype)
