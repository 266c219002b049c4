"""The HybridSparseConv2D wire format: packed sparse filter arrays and custom options.

The C++ reader is tflite_ops/options.h (options) and tflite_ops/kernels/sparse_conv.h (filter
format); this module is the only Python writer. Format version 1.
"""

from __future__ import annotations

import dataclasses
import struct

import numpy as np

OP_NAME = "HybridSparseConv2D"
FORMAT_VERSION = 1
_MAGIC = b"HSPC"
_HEADER = struct.Struct("<4s13i")  # magic, version, 12 geometry fields: 56 bytes

PADDING_CODES = {"SAME": 0, "VALID": 1}
ACTIVATION_CODES = {"NONE": 0, "RELU": 1, "RELU6": 2}


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

    values: np.ndarray  # float32 [nonzero_blocks * block_size]
    col_ptr: np.ndarray  # int32 [kernel_h * kernel_w * in_channels + 1]
    row_block: np.ndarray  # int16 [nonzero_blocks]
    block_size: int
    out_channels: int

    @property
    def nonzero_blocks(self) -> int:
        return int(self.row_block.size)

    @property
    def nbytes(self) -> int:
        return self.values.nbytes + self.col_ptr.nbytes + self.row_block.nbytes


def pack_filter(filter_ohwi: np.ndarray, block_size: int = 1) -> PackedFilter:
    """Packs a TFLite-layout [out_c, kh, kw, in_c] filter, keeping every block with a nonzero."""
    if filter_ohwi.ndim != 4:
        raise ValueError(f"filter must be 4-D [out_c, kh, kw, in_c], got shape {filter_ohwi.shape}")
    if block_size < 1 or block_size > 64:
        raise ValueError(f"block_size must be in [1, 64], got {block_size}")
    out_c = filter_ohwi.shape[0]
    w = np.asarray(filter_ohwi, dtype=np.float32).reshape(out_c, -1)
    num_cols = w.shape[1]
    num_blocks = -(-out_c // block_size)
    if num_blocks > 32768:
        raise ValueError(f"{num_blocks} output-channel blocks exceed the int16 index range")
    padded = np.zeros((num_blocks * block_size, num_cols), np.float32)
    padded[:out_c] = w
    blocks = padded.reshape(num_blocks, block_size, num_cols)
    nonzero = np.any(blocks != 0, axis=1)  # [num_blocks, num_cols]
    cols, rows = np.nonzero(nonzero.T)  # sorted by column, then block: the CSC order
    col_ptr = np.zeros(num_cols + 1, np.int32)
    np.cumsum(np.bincount(cols, minlength=num_cols), out=col_ptr[1:])
    values = blocks[rows, :, cols].reshape(-1).astype(np.float32)
    return PackedFilter(values, col_ptr, rows.astype(np.int16), block_size, out_c)


def unpack_filter(packed: PackedFilter, geometry: ConvGeometry) -> np.ndarray:
    """Inverse of pack_filter, for tests and inspection: returns [out_c, kh, kw, in_c]."""
    g = geometry
    num_cols = g.kernel_h * g.kernel_w * g.in_channels
    num_blocks = -(-g.out_channels // packed.block_size)
    blocks = np.zeros((num_blocks, packed.block_size, num_cols), np.float32)
    cols = np.repeat(np.arange(num_cols), np.diff(packed.col_ptr))
    blocks[packed.row_block.astype(np.int64), :, cols] = packed.values.reshape(-1, packed.block_size)
    w = blocks.reshape(num_blocks * packed.block_size, num_cols)[: g.out_channels]
    return w.reshape(g.out_channels, g.kernel_h, g.kernel_w, g.in_channels)


def encode_options(
    geometry: ConvGeometry, block_size: int, thresholds: np.ndarray | None = None
) -> bytes:
    g = geometry
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
        ACTIVATION_CODES[g.activation], block_size, thr.size)
    return header + thr.astype("<f4").tobytes()


def decode_options(data: bytes) -> tuple[ConvGeometry, int, np.ndarray]:
    """Parses options written by encode_options (for reports and tests; C++ has its own)."""
    if len(data) < _HEADER.size or data[:4] != _MAGIC:
        raise ValueError("not HybridSparseConv2D options")
    fields = _HEADER.unpack_from(data)
    (_, version, kh, kw, ic, oc, sh, sw, dh, dw, pad, act, block_size, nthr) = fields
    if version != FORMAT_VERSION:
        raise ValueError(f"unsupported format_version {version}")
    pads = {v: k for k, v in PADDING_CODES.items()}
    acts = {v: k for k, v in ACTIVATION_CODES.items()}
    geometry = ConvGeometry(kh, kw, ic, oc, sh, sw, dh, dw, pads[pad], acts[act])
    thresholds = np.frombuffer(data[_HEADER.size:], "<f4", count=nthr).astype(np.float32)
    return geometry, block_size, thresholds
