"""A LiteRT interpreter with HybridSparseConv2D available (through our delegate plugin)."""

from __future__ import annotations

import functools
import os
import pathlib

from ai_edge_litert import interpreter as litert

_DELEGATE_ENV = "HYBRID_PRUNING_DELEGATE"
_LIBRARY = "libhybrid_sparse_delegate.so"


def delegate_path() -> str:
    """The plugin: $HYBRID_PRUNING_DELEGATE, else the one Bazel built beside this package."""
    env = os.environ.get(_DELEGATE_ENV)
    if env:
        return env
    here = pathlib.Path(__file__).resolve().parent
    candidates = [
        pathlib.Path(__file__).parent.parent.parent / "tflite_ops" / _LIBRARY,  # runfiles tree
        here.parent.parent / "bazel-bin" / "tflite_ops" / _LIBRARY,  # source tree after a build
    ]
    for c in candidates:
        if c.exists():
            return str(c)
    raise FileNotFoundError(
        f"{_LIBRARY} not found (looked in {', '.join(map(str, candidates))}); build it with "
        f"'./bazelw build //tflite_ops:{_LIBRARY}' or set ${_DELEGATE_ENV}")


@functools.cache
def clock_ghz() -> float:
    """This core's effective clock, measured by the plugin once per process (0.0 where it
    cannot): every model priced in one run uses the same clock, and a second reading on a
    loaded machine (a turbo bin lost to a neighbour's load) would differ."""
    import ctypes

    fn = ctypes.CDLL(delegate_path()).hybrid_sparse_clock_ghz
    fn.restype = ctypes.c_double
    return float(fn())


@functools.cache
def kernel_geometry() -> dict:
    """Every ISA's microkernel geometry as the plugin is built with it (kernels/geometry.h),
    the ISAs this build lacks included: {"f32": {name: {lanes, tile, pass, max_rows}}, "qs8":
    {name: {lanes, tiles}}, "rvv": {lmul, max_rows}}."""
    import ctypes
    import json

    fn = ctypes.CDLL(delegate_path()).hybrid_sparse_kernel_geometry
    fn.restype = ctypes.c_char_p
    return json.loads(fn().decode())


def make_interpreter(
    model_path: str | None = None, model_content: bytes | None = None, num_threads: int = 1,
    with_ops: bool = True, kernel: str = "", reference_ops: bool = False,
) -> litert.Interpreter:
    """An interpreter on a model file or bytes; with_ops=False gives the stock one (XNNPACK).
    `kernel` forces a kernel variant ("reference", "avx2", "avx512", "neon", "rvv", as built for
    and supported by this CPU); "" picks the fastest here. `reference_ops`: TFLite's
    reference kernels for the builtin ops, no XNNPACK (the definition int8 results are
    bit-exact with)."""
    delegates = []
    if with_ops:
        options = {"num_threads": str(num_threads)}
        if kernel:
            options["kernel"] = kernel
        delegates.append(litert.load_delegate(delegate_path(), options))
    resolver = (litert.OpResolverType.BUILTIN_REF if reference_ops
                else litert.OpResolverType.AUTO)
    return litert.Interpreter(
        model_path=model_path, model_content=model_content, num_threads=num_threads,
        experimental_delegates=delegates, experimental_op_resolver_type=resolver)


def predict(model_content: bytes, x, num_threads: int = 1, with_ops: bool = True,
            kernel: str = ""):
    """Runs a one-input, one-output model on the batch `x` (the batch size is resized)."""
    it = make_interpreter(model_content=model_content, num_threads=num_threads,
                          with_ops=with_ops, kernel=kernel)
    inp = it.get_input_details()[0]["index"]
    it.resize_tensor_input(inp, x.shape)
    it.allocate_tensors()
    it.set_tensor(inp, x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


def predict_all(model_content: bytes, x, num_threads: int = 1, with_ops: bool = True,
                batch_size: int = 32) -> list:
    """Every output of a one-input model on the batch `x`, in the Keras model's output order
    (the converter names them output_0, output_1, ... in its signature), in chunks of
    `batch_size` so that big models do not hold every probe's activations at once."""
    import numpy as np

    it = make_interpreter(model_content=model_content, num_threads=num_threads,
                          with_ops=with_ops)
    inp = it.get_input_details()[0]["index"]
    details = it.get_output_details()
    order = list(range(len(details)))
    signatures = it.get_signature_list()
    if len(details) > 1 and signatures:
        outputs = next(iter(signatures.values()))["outputs"]
        by_tensor = {it.get_signature_runner(next(iter(signatures)))
                     .get_output_details()[name]["index"]: name for name in outputs}
        names = [by_tensor.get(d["index"], "") for d in details]

        def rank(i):
            tail = names[i].rsplit("_", 1)[-1]
            return (0, int(tail)) if tail.isdigit() else (1, names[i])

        order = sorted(order, key=rank)
    chunks = [[] for _ in details]
    for start in range(0, len(x), batch_size):
        part = x[start:start + batch_size]
        it.resize_tensor_input(inp, part.shape)
        it.allocate_tensors()
        it.set_tensor(inp, part)
        it.invoke()
        for k, i in enumerate(order):
            chunks[k].append(it.get_tensor(details[i]["index"]).copy())
    return [np.concatenate(c) for c in chunks]
