"""The HybridSparseConv2D wire format: packed sparse filter arrays and custom options.

The C++ reader is tflite_ops/options.h (options) and tflite_ops/kernels/sparse_conv.h (filter
format); this module is the only Python writer. Format version 2 (version 1, float32 only, lacked the
dtype and rounding fields; the C++ reader still takes it).
"""

from __future__ import annotations

import dataclasses
import struct

import numpy as np

OP_NAME = "HybridSparseConv2D"
FORMAT_VERSION = 2
_MAGIC = b"HSPC"
_HEADER = struct.Struct("<4s15i")  # magic, version, 12 geometry fields, dtype, rounding: 64 B

PADDING_CODES = {"SAME": 0, "VALID": 1}
ACTIVATION_CODES = {"NONE": 0, "RELU": 1, "RELU6": 2}
DTYPE_CODES = {"float32": 0, "int8": 1}
# TFLite's two requantization roundings (sparse_conv.h): "double" is its default build's.
ROUNDING_CODES = {"double": 0, "single": 1}


@dataclasses.dataclass(frozen=True)
class ConvGeometry:
    kernel_h: int
    kernel_w: int
    in_channels: int
    out_channels: int
    stride_h: int = 1
    stride_w: int = 1
    dilation_h: int = 1
    dilation_w: int = 1
    padding: str = "SAME"
    activation: str = "NONE"


@dataclasses.dataclass(frozen=True)
class PackedFilter:
    """Column-compressed blocks of output channels (see sparse_conv.h for the layout)."""

    values: np.ndarray  # float32 [nonzero_blocks * block_size]; int8: [... * block_size * 4]
    col_ptr: np.ndarray  # int32 [columns + 1]: kernel_h * kernel_w * in_channels (int8:
                         # * ceil(in_channels / 4), one column per group of 4 channels)
    row_block: np.ndarray  # int16 [nonzero_blocks]
    block_size: int
    out_channels: int

    @property
    def nonzero_blocks(self) -> int:
        return int(self.row_block.size)

    @property
    def nbytes(self) -> int:
        return self.values.nbytes + self.col_ptr.nbytes + self.row_block.nbytes


def _pack_columns(w: np.ndarray, block_size: int, out_c: int) -> PackedFilter:
    """The CSC packing both dtypes share: w is [out_c, columns, unit] (unit: the weights of a
    column, 1 float or 4 int8); a block of block_size x unit weights is kept if any is nonzero."""
    if block_size < 1 or block_size > 64:
        raise ValueError(f"block_size must be in [1, 64], got {block_size}")
    num_cols, unit = w.shape[1], w.shape[2]
    num_blocks = -(-out_c // block_size)
    if num_blocks > 32768:
        raise ValueError(f"{num_blocks} output-channel blocks exceed the int16 index range")
    padded = np.zeros((num_blocks * block_size, num_cols, unit), w.dtype)
    padded[:out_c] = w
    blocks = padded.reshape(num_blocks, block_size, num_cols, unit)
    nonzero = np.any(blocks != 0, axis=(1, 3))  # [num_blocks, num_cols]
    cols, rows = np.nonzero(nonzero.T)  # sorted by column, then block: the CSC order
    col_ptr = np.zeros(num_cols + 1, np.int32)
    np.cumsum(np.bincount(cols, minlength=num_cols), out=col_ptr[1:])
    values = blocks[rows, :, cols, :].reshape(-1)  # [nonzero blocks, block_size, unit]
    return PackedFilter(values, col_ptr, rows.astype(np.int16), block_size, out_c)


def pack_filter(filter_ohwi: np.ndarray, block_size: int = 1) -> PackedFilter:
    """Packs a TFLite-layout [out_c, kh, kw, in_c] filter, keeping every block with a nonzero."""
    if filter_ohwi.ndim != 4:
        raise ValueError(f"filter must be 4-D [out_c, kh, kw, in_c], got shape {filter_ohwi.shape}")
    out_c = filter_ohwi.shape[0]
    w = np.asarray(filter_ohwi, dtype=np.float32).reshape(out_c, -1, 1)
    return _pack_columns(w, block_size, out_c)


def pack_filter_qs8(filter_ohwi: np.ndarray, block_size: int = 1) -> PackedFilter:
    """Packs an int8 [out_c, kh, kw, in_c] filter in the qs8 format (sparse_conv.h): columns
    are groups of 4 consecutive input channels at one tap; a block is kept where any of its
    block_size x 4 weights is nonzero."""
    if filter_ohwi.ndim != 4 or filter_ohwi.dtype != np.int8:
        raise ValueError(f"filter must be a 4-D int8 [out_c, kh, kw, in_c] array, got "
                         f"{filter_ohwi.dtype} {filter_ohwi.shape}")
    out_c, kh, kw, in_c = filter_ohwi.shape
    groups = -(-in_c // 4)
    padded = np.zeros((out_c, kh, kw, groups * 4), np.int8)
    padded[..., :in_c] = filter_ohwi
    return _pack_columns(padded.reshape(out_c, kh * kw * groups, 4), block_size, out_c)


def unpack_filter_qs8(packed: PackedFilter, geometry: ConvGeometry) -> np.ndarray:
    """Inverse of pack_filter_qs8: returns int8 [out_c, kh, kw, in_c]."""
    g = geometry
    groups = -(-g.in_channels // 4)
    w = _unpack_columns(packed, g.kernel_h * g.kernel_w * groups, 4)
    return w.reshape(g.out_channels, g.kernel_h, g.kernel_w, groups * 4)[..., :g.in_channels]


def _unpack_columns(packed: PackedFilter, num_cols: int, unit: int) -> np.ndarray:
    """[out_c, num_cols * unit] from the CSC arrays (inverse of _pack_columns)."""
    bs = packed.block_size
    num_blocks = -(-packed.out_channels // bs)
    blocks = np.zeros((num_blocks, bs, num_cols, unit), packed.values.dtype)
    cols = np.repeat(np.arange(num_cols), np.diff(packed.col_ptr))
    blocks[packed.row_block.astype(np.int64), :, cols, :] = packed.values.reshape(-1, bs, unit)
    return blocks.reshape(num_blocks * bs, num_cols * unit)[: packed.out_channels]


def unpack_filter(packed: PackedFilter, geometry: ConvGeometry) -> np.ndarray:
    """Inverse of pack_filter, for tests and inspection: returns [out_c, kh, kw, in_c]."""
    g = geometry
    w = _unpack_columns(packed, g.kernel_h * g.kernel_w * g.in_channels, 1)
    return w.reshape(g.out_channels, g.kernel_h, g.kernel_w, g.in_channels)


def encode_options(
    geometry: ConvGeometry, block_size: int, thresholds: np.ndarray | None = None,
    dtype: str = "float32", rounding: str = "double",
) -> bytes:
    g = geometry
    if dtype not in DTYPE_CODES or rounding not in ROUNDING_CODES:
        raise ValueError(f"dtype must be one of {sorted(DTYPE_CODES)} and rounding one of "
                         f"{sorted(ROUNDING_CODES)}, got {dtype!r}, {rounding!r}")
    if dtype == "int8" and thresholds is not None and np.size(thresholds):
        raise ValueError("int8 takes no activation thresholds")
    if g.padding not in PADDING_CODES:
        raise ValueError(f"padding must be one of {sorted(PADDING_CODES)}, got {g.padding!r}")
    if g.activation not in ACTIVATION_CODES:
        raise ValueError(
            f"activation must be one of {sorted(ACTIVATION_CODES)}, got {g.activation!r}")
    thr = np.zeros(0, np.float32) if thresholds is None else np.asarray(thresholds, "<f4")
    if thr.size not in (0, g.in_channels):
        raise ValueError(f"need 0 or {g.in_channels} thresholds, got {thr.size}")
    header = _HEADER.pack(
        _MAGIC, FORMAT_VERSION, g.kernel_h, g.kernel_w, g.in_channels, g.out_channels,
        g.stride_h, g.stride_w, g.dilation_h, g.dilation_w, PADDING_CODES[g.padding],
        ACTIVATION_CODES[g.activation], block_size, thr.size, DTYPE_CODES[dtype],
        ROUNDING_CODES[rounding])
    return header + thr.astype("<f4").tobytes()


def decode_options(data: bytes) -> tuple[ConvGeometry, int, np.ndarray]:
    """Parses options written by encode_options (for reports and tests; C++ has its own)."""
    if len(data) < _HEADER.size or data[:4] != _MAGIC:
        raise ValueError(f"not {OP_NAME} options")
    fields = _HEADER.unpack_from(data)
    (_, version, kh, kw, ic, oc, sh, sw, dh, dw, pad, act, block_size, nthr, _, _) = fields
    if version != FORMAT_VERSION:
        raise ValueError(f"unsupported format_version {version}")
    pads = {v: k for k, v in PADDING_CODES.items()}
    acts = {v: k for k, v in ACTIVATION_CODES.items()}
    geometry = ConvGeometry(kh, kw, ic, oc, sh, sw, dh, dw, pads[pad], acts[act])
    thresholds = np.frombuffer(data[_HEADER.size:], "<f4", count=nthr).astype(np.float32)
    return geometry, block_size, thresholds
