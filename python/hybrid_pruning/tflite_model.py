"""Reading, editing and building TFLite flatbuffers through the schema's object API.

Also builds one-op models (builtin CONV_2D or our op from the same weights): the
SingleOpModel-style harness that the op tests and benchmarks share.
"""

from __future__ import annotations

import numpy as np
from tensorflow.lite.python import schema_py_generated as schema
from tensorflow.lite.tools import flatbuffer_utils

from hybrid_pruning import op_format

BuiltinOperator = schema.BuiltinOperator
TensorType = schema.TensorType

_NUMPY_TYPES = {
    TensorType.FLOAT32: np.float32,
    TensorType.INT32: np.int32,
    TensorType.INT16: np.int16,
    TensorType.INT8: np.int8,
    TensorType.UINT8: np.uint8,
    TensorType.INT64: np.int64,
}
_FUSED_ACTIVATIONS = {
    schema.ActivationFunctionType.NONE: "NONE",
    schema.ActivationFunctionType.RELU: "RELU",
    schema.ActivationFunctionType.RELU6: "RELU6",
}
_PADDINGS = {schema.Padding.SAME: "SAME", schema.Padding.VALID: "VALID"}


def read(model_bytes: bytes) -> schema.ModelT:
    return flatbuffer_utils.convert_bytearray_to_object(bytearray(model_bytes))


def write(model: schema.ModelT) -> bytes:
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def opcode_index(model: schema.ModelT, builtin: int, custom: str | None = None) -> int:
    """Index of the operator code, added to the model if missing."""
    for i, code in enumerate(model.operatorCodes):
        code_value = max(code.builtinCode, code.deprecatedBuiltinCode)
        name = code.customCode.decode() if isinstance(code.customCode, bytes) else code.customCode
        if code_value == builtin and (custom is None or name == custom):
            return i
    code = schema.OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = min(builtin, 127)  # field is int8 in old schema versions
    code.version = 1
    if custom is not None:
        code.customCode = custom
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def builtin_code(model: schema.ModelT, op: schema.OperatorT) -> int:
    code = model.operatorCodes[op.opcodeIndex]
    return max(code.builtinCode, code.deprecatedBuiltinCode)


def custom_code(model: schema.ModelT, op: schema.OperatorT) -> str | None:
    name = model.operatorCodes[op.opcodeIndex].customCode
    return name.decode() if isinstance(name, bytes) else name


def add_buffer(model: schema.ModelT, data: np.ndarray | None) -> int:
    buf = schema.BufferT()
    if data is not None:
        buf.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
    model.buffers.append(buf)
    return len(model.buffers) - 1


def add_tensor(
    model: schema.ModelT, subgraph: schema.SubGraphT, name: str, shape, tensor_type: int,
    data: np.ndarray | None = None, shape_signature=None,
) -> int:
    t = schema.TensorT()
    t.name = name
    t.shape = np.asarray(shape, np.int32)
    if shape_signature is not None:
        t.shapeSignature = np.asarray(shape_signature, np.int32)
    t.type = tensor_type
    t.buffer = add_buffer(model, data)
    subgraph.tensors.append(t)
    return len(subgraph.tensors) - 1


def constant(model: schema.ModelT, subgraph: schema.SubGraphT, index: int) -> np.ndarray | None:
    """The data of a constant tensor, or None if it has no buffer data."""
    if index < 0:
        return None
    t = subgraph.tensors[index]
    buf = model.buffers[t.buffer]
    if buf.data is None or len(buf.data) == 0 or t.type not in _NUMPY_TYPES:
        return None
    data = np.frombuffer(np.asarray(buf.data, np.uint8).tobytes(), _NUMPY_TYPES[t.type])
    return data.reshape(t.shape)


def same_weights(expected: np.ndarray, held: np.ndarray) -> bool:
    """Whether a constant holds these weights, up to the converter's folding round-off."""
    return expected.shape == held.shape and np.allclose(
        expected, held, rtol=1e-4,
        atol=1e-6 * max(1.0, float(np.abs(expected).max(initial=0.0))))


def input_scale(expected: np.ndarray, held: np.ndarray) -> np.ndarray | None:
    """s with held = expected * s along the input channels (the last axis), where the
    converter folded a multiply before the layer into its filter (a Rescaling before the
    first conv: EfficientNet's stem and most image models); None if there is none."""
    if expected.shape != held.shape:
        return None
    k = expected.reshape(-1, expected.shape[-1]).astype(np.float64)
    w = held.reshape(-1, held.shape[-1]).astype(np.float64)
    norm = np.einsum("ki,ki->i", k, k)
    if not np.all(norm > 0):
        return None  # an input channel without weights: its factor is unknowable
    scale = (np.einsum("ki,ki->i", k, w) / norm).astype(np.float32)
    return scale if same_weights(expected * scale, held) else None


def own_weights(model: schema.ModelT, layers: dict[str, tuple[np.ndarray, np.ndarray | None]]
                ) -> dict[str, tuple[int, int | None, np.ndarray | None]] | None:
    """Where each layer's weights live, so that new ones can be written in place:
    {name: (filter buffer, bias buffer or None, input scale or None)}, for `layers` = {name:
    (filter as the op holds it (OHWI for CONV_2D, (out, in) for FULLY_CONNECTED), bias, or
    None when it never changes)}. Each layer must match exactly one CONV_2D or
    FULLY_CONNECTED op of subgraph 0 by contents (or by contents times a factor per input
    channel, see input_scale: new filters get the same factors), with a filter no other op
    or tensor shares; else None. Gives an op a bias tensor of its own where the converter
    shared one between ops (it merges equal constants) or dropped it (a zero bias)."""
    sg = model.subgraphs[0]
    buffer_users: dict[int, int] = {}
    for graph in model.subgraphs:
        for t in graph.tensors:
            buffer_users[t.buffer] = buffer_users.get(t.buffer, 0) + 1
    tensor_users: dict[int, int] = {}
    for op in sg.operators:
        for i in op.inputs:
            tensor_users[int(i)] = tensor_users.get(int(i), 0) + 1

    def shared(tensor: int) -> bool:
        return tensor_users[tensor] != 1 or buffer_users[sg.tensors[tensor].buffer] != 1

    found: dict[str, tuple[int, int | None]] = {}
    for op in sg.operators:
        if builtin_code(model, op) not in (BuiltinOperator.CONV_2D,
                                           BuiltinOperator.FULLY_CONNECTED):
            continue
        w = constant(model, sg, int(op.inputs[1]))
        if w is None or w.dtype != np.float32:
            continue
        hits = [n for n, (k, _) in layers.items() if same_weights(k, w)]
        scale = None
        if not hits:
            scaled = {n: input_scale(k, w) for n, (k, _) in layers.items()}
            hits = [n for n, f in scaled.items() if f is not None]
            if not hits:
                continue
            scale = scaled[hits[0]]
        if len(hits) > 1 or hits[0] in found or shared(int(op.inputs[1])):
            return None  # layers with equal weights: which is which is unknowable
        name, bias = hits[0], layers[hits[0]][1]
        b_index = int(op.inputs[2]) if len(op.inputs) > 2 else -1
        b = constant(model, sg, b_index)
        if b_index >= 0 and b is None:
            return None  # a bias computed at run time
        if bias is not None and b is not None and not same_weights(bias, b):
            return None  # the converter folded more into it than the layer knows
        if bias is not None and (b is None or shared(b_index)):
            data = np.zeros(len(bias), np.float32) if b is None else b.astype(np.float32)
            b_index = add_tensor(model, sg, f"{name}/own_bias", [len(bias)],
                                 TensorType.FLOAT32, data)
            op.inputs = np.asarray([*op.inputs[:2], b_index, *op.inputs[3:]], np.int32)
        found[name] = (sg.tensors[int(op.inputs[1])].buffer,
                       sg.tensors[b_index].buffer if bias is not None else None, scale)
    return found if len(found) == len(layers) else None


def set_buffer(model: schema.ModelT, index: int, data: np.ndarray) -> None:
    """Replaces a constant buffer's bytes (same size: the tensor's shape stays)."""
    new = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
    if len(new) != len(model.buffers[index].data):
        raise ValueError(f"buffer {index}: {len(new)} bytes for {len(model.buffers[index].data)}")
    model.buffers[index].data = new


def conv_geometry(op: schema.OperatorT, filter_shape) -> op_format.ConvGeometry | None:
    """Our geometry for a builtin CONV_2D, or None when the op has options we do not run."""
    opts = op.builtinOptions
    if not isinstance(opts, schema.Conv2DOptionsT):
        return None
    if opts.fusedActivationFunction not in _FUSED_ACTIVATIONS or opts.padding not in _PADDINGS:
        return None
    out_c, kh, kw, in_c = (int(d) for d in filter_shape)
    return op_format.ConvGeometry(
        kh, kw, in_c, out_c, opts.strideH, opts.strideW, opts.dilationHFactor,
        opts.dilationWFactor, _PADDINGS[opts.padding], _FUSED_ACTIVATIONS[opts.fusedActivationFunction])


def make_hybrid_op(
    model: schema.ModelT, subgraph: schema.SubGraphT, name: str, input_index: int,
    output_index: int, geometry: op_format.ConvGeometry, filter_ohwi: np.ndarray,
    bias: np.ndarray | None, block_size: int = 1, thresholds: np.ndarray | None = None,
    filter_scales: np.ndarray | None = None, rounding: str = "double",
) -> schema.OperatorT:
    """Our operator with its packed weights added as constant tensors. An int8 filter (with
    its per-channel `filter_scales` and an int32 bias) makes the int8 op, whose input and
    output tensors carry their own scale and zero point."""
    int8 = filter_ohwi.dtype == np.int8
    if int8 and filter_scales is None:
        raise ValueError(f"{name}: an int8 filter needs its per-channel scales")
    packed = (op_format.pack_filter_qs8 if int8 else op_format.pack_filter)(filter_ohwi,
                                                                            block_size)
    values = add_tensor(model, subgraph, f"{name}/hsc_values", [packed.values.size],
                        TensorType.INT8 if int8 else TensorType.FLOAT32, packed.values)
    col_ptr = add_tensor(model, subgraph, f"{name}/hsc_col_ptr", [packed.col_ptr.size],
                         TensorType.INT32, packed.col_ptr)
    row_block = add_tensor(model, subgraph, f"{name}/hsc_row_block", [packed.row_block.size],
                           TensorType.INT16, packed.row_block)
    bias_index = -1
    if bias is not None:
        bias_type = (TensorType.INT32, np.int32) if int8 else (TensorType.FLOAT32, np.float32)
        bias_index = add_tensor(model, subgraph, f"{name}/hsc_bias", [geometry.out_channels],
                                bias_type[0], np.asarray(bias, bias_type[1]))
    inputs = [input_index, values, col_ptr, row_block, bias_index]
    if int8:
        inputs.append(add_tensor(model, subgraph, f"{name}/hsc_filter_scales",
                                 [geometry.out_channels], TensorType.FLOAT32,
                                 np.asarray(filter_scales, np.float32)))
    op = schema.OperatorT()
    op.opcodeIndex = opcode_index(model, BuiltinOperator.CUSTOM, op_format.OP_NAME)
    op.inputs = np.asarray(inputs, np.int32)
    op.outputs = np.asarray([output_index], np.int32)
    op.customOptions = np.frombuffer(op_format.encode_options(
        geometry, block_size, thresholds, "int8" if int8 else "float32", rounding), np.uint8)
    op.customOptionsFormat = schema.CustomOptionsFormat.FLEXBUFFERS  # the schema's only value
    return op


def quantize_tensor(subgraph: schema.SubGraphT, index: int, scales, zero_points,
                    dimension: int = 0) -> None:
    """Gives a tensor affine quantization parameters (per tensor, or per channel along
    `dimension`)."""
    q = schema.QuantizationParametersT()
    q.scale = np.atleast_1d(np.asarray(scales, np.float32))
    q.zeroPoint = np.atleast_1d(np.asarray(zero_points, np.int64))
    q.quantizedDimension = dimension
    subgraph.tensors[index].quantization = q


def quantization(subgraph: schema.SubGraphT, index: int) -> tuple[np.ndarray, np.ndarray] | None:
    """A tensor's (scales, zero points), or None when it is not quantized."""
    q = subgraph.tensors[index].quantization
    if q is None or q.scale is None or len(q.scale) == 0:
        return None
    return np.asarray(q.scale, np.float32), np.asarray(q.zeroPoint, np.int64)


def remove_unused_tensors(model: schema.ModelT) -> None:
    """Drops tensors no operator or signature uses, and buffers no tensor uses."""
    used_buffers = {0}  # buffer 0 is the schema's empty sentinel
    for sg_index, sg in enumerate(model.subgraphs):
        used = set(int(i) for i in sg.inputs) | set(int(i) for i in sg.outputs)
        for op in sg.operators:
            used.update(int(i) for i in op.inputs if i >= 0)
            used.update(int(i) for i in op.outputs if i >= 0)
            if op.intermediates is not None:
                used.update(int(i) for i in op.intermediates if i >= 0)
        keep = sorted(used)
        remap = {old: new for new, old in enumerate(keep)}

        def _map(indices):
            return np.asarray([remap[int(i)] if i >= 0 else -1 for i in indices], np.int32)

        sg.tensors = [sg.tensors[i] for i in keep]
        sg.inputs, sg.outputs = _map(sg.inputs), _map(sg.outputs)
        for op in sg.operators:
            op.inputs, op.outputs = _map(op.inputs), _map(op.outputs)
            if op.intermediates is not None:
                op.intermediates = _map(op.intermediates)
        for sig in model.signatureDefs or []:
            if sig.subgraphIndex == sg_index:
                for io in list(sig.inputs or []) + list(sig.outputs or []):
                    io.tensorIndex = remap[int(io.tensorIndex)]
        used_buffers.update(t.buffer for t in sg.tensors)
    buffer_remap = {old: new for new, old in enumerate(sorted(used_buffers))}
    model.buffers = [model.buffers[i] for i in sorted(used_buffers)]
    for sg in model.subgraphs:
        for t in sg.tensors:
            t.buffer = buffer_remap[t.buffer]


def single_conv_model(
    input_shape, filter_ohwi: np.ndarray, bias: np.ndarray | None,
    geometry: op_format.ConvGeometry, op: str = "builtin", block_size: int = 1,
    thresholds: np.ndarray | None = None, int8: dict | None = None,
) -> bytes:
    """A one-operator model: builtin CONV_2D, or our op ("hybrid") on the same weights.
    int8: {"input": (scale, zero point), "output": (scale, zero point), "filter_scales":
    [out_c], "rounding": "double"|"single"} makes both int8 (filter_ohwi int8, bias int32),
    quantized as TFLite's converter does (per-channel symmetric filter, bias at input scale
    x filter scale)."""
    g = geometry
    model = schema.ModelT()
    model.version = 3
    model.operatorCodes, model.buffers, model.subgraphs = [], [], []
    add_buffer(model, None)
    sg = schema.SubGraphT()
    sg.tensors, sg.operators = [], []
    sg.name = "main"
    batch, in_h, in_w, in_c = input_shape
    act_type = TensorType.INT8 if int8 else TensorType.FLOAT32
    x = add_tensor(model, sg, "input", [batch, in_h, in_w, in_c], act_type)
    # The output shape is recomputed by the kernels' Prepare; a placeholder suffices.
    y = add_tensor(model, sg, "output", [batch, 1, 1, g.out_channels], act_type)
    if int8:
        quantize_tensor(sg, x, *int8["input"])
        quantize_tensor(sg, y, *int8["output"])
    if op == "builtin":
        conv = schema.OperatorT()
        conv.opcodeIndex = opcode_index(model, BuiltinOperator.CONV_2D)
        if int8:
            w = add_tensor(model, sg, "filter", filter_ohwi.shape, TensorType.INT8,
                           np.asarray(filter_ohwi, np.int8))
            quantize_tensor(sg, w, int8["filter_scales"], np.zeros(g.out_channels))
            b = add_tensor(model, sg, "bias", [g.out_channels], TensorType.INT32,
                           np.zeros(g.out_channels, np.int32) if bias is None
                           else np.asarray(bias, np.int32))
            quantize_tensor(sg, b, np.asarray(int8["filter_scales"], np.float64)
                            * int8["input"][0], np.zeros(g.out_channels))
        else:
            w = add_tensor(model, sg, "filter", filter_ohwi.shape, TensorType.FLOAT32,
                           np.asarray(filter_ohwi, np.float32))
            b = add_tensor(model, sg, "bias", [g.out_channels], TensorType.FLOAT32,
                           np.zeros(g.out_channels, np.float32) if bias is None
                           else np.asarray(bias, np.float32))
        conv.inputs = np.asarray([x, w, b], np.int32)
        conv.outputs = np.asarray([y], np.int32)
        opts = schema.Conv2DOptionsT()
        opts.padding = {v: k for k, v in _PADDINGS.items()}[g.padding]
        opts.strideH, opts.strideW = g.stride_h, g.stride_w
        opts.dilationHFactor, opts.dilationWFactor = g.dilation_h, g.dilation_w
        opts.fusedActivationFunction = {v: k for k, v in _FUSED_ACTIVATIONS.items()}[g.activation]
        conv.builtinOptionsType = schema.BuiltinOptions.Conv2DOptions
        conv.builtinOptions = opts
    elif op == "hybrid":
        conv = make_hybrid_op(
            model, sg, "conv", x, y, g, filter_ohwi, bias, block_size, thresholds,
            filter_scales=int8["filter_scales"] if int8 else None,
            rounding=int8.get("rounding", "double") if int8 else "double")
    else:
        raise ValueError(f"op must be 'builtin' or 'hybrid', got {op!r}")
    sg.operators.append(conv)
    sg.inputs = np.asarray([x], np.int32)
    sg.outputs = np.asarray([y], np.int32)
    model.subgraphs.append(sg)
    return write(model)
