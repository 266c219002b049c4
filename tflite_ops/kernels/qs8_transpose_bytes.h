// The qs8 results' byte transpose, [channel][position] -> NHWC, in 16x16 blocks of 16-byte
// vectors: one algorithm for every ISA with 16-byte interleaves, given as `V`:
//   V::T                           the vector type
//   V::Load(p), V::Store(p, v)     unaligned 16-byte load and store
//   V::Zero()
//   V::Zip<bits, high>(a, b)       interleave the low (high) halves of a and b in elements
//                                  of 8, 16, 32 or 64 bits (x86 unpacklo/unpackhi, NEON
//                                  zip1/zip2)
// The ISA file defines V and instantiates Qs8TransposeBytes16<V> as its family's transpose.
#ifndef TFLITE_OPS_KERNELS_QS8_TRANSPOSE_BYTES_H_
#define TFLITE_OPS_KERNELS_QS8_TRANSPOSE_BYTES_H_

#include <cstdint>
#include <cstring>

namespace hybrid_sparse {
// Internal linkage: each ISA file gets its own copy, compiled with its flags (one inline
// definition shared by the linker could carry AVX-512 encodings into the AVX2 path).
namespace {

// One round of the 16x16 byte transpose: rows i and i + 8 interleaved at one width.
template <class V, int kBits>
inline void Interleave16(typename V::T* r) {
  typename V::T t[16];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = V::template Zip<kBits, false>(r[i], r[i + 8]);
    t[2 * i + 1] = V::template Zip<kBits, true>(r[i], r[i + 8]);
  }
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) r[i] = t[i];
}

// One 16x16 block, its rows loaded in bit-reversed order: four rounds of interleaving rows i
// and i + 8 leave row i's bytes in bit-reversed lane order, so the result is the transpose.
template <class V>
inline void TransposeBlock16(typename V::T* r) {
  Interleave16<V, 8>(r);
  Interleave16<V, 16>(r);
  Interleave16<V, 32>(r);
  Interleave16<V, 64>(r);
}

constexpr int kBitReversed16[16] = {0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15};

// 16 channels and up to 16 positions, its rows in registers (fully unrolled, constant
// indices). Fewer positions: loads whole rows (reading up to 15 bytes past the last
// position, which Qs8TransposeFn allows) and stores only the positions' rows, each of them
// whole (16 channels: none belongs to the next position).
template <class V>
inline void TransposePositions16(const int8_t* src, int src_stride, int positions, int8_t* dst,
                                 int64_t dst_stride) {
  typename V::T r[16];
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) r[i] = V::Load(src + kBitReversed16[i] * src_stride);
  TransposeBlock16<V>(r);
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i)
    if (i < positions) V::Store(dst + i * dst_stride, r[i]);
}

// A block at a channel edge (fewer than 16 channels): loads whole rows of the channels
// there are (reading up to 15 bytes past the last position, which Qs8TransposeFn allows),
// transposes through a buffer and copies out only the bytes that belong to the block (a
// whole row would write over the next position's first channels). Apart from the whole
// blocks: indexed at run time, their registers would go to the stack.
template <class V>
__attribute__((noinline)) void TransposeEdge16(const int8_t* src, int src_stride, int channels,
                                               int positions, int8_t* dst, int64_t dst_stride) {
  typename V::T r[16];
  for (int i = 0; i < 16; ++i)
    r[i] = kBitReversed16[i] < channels ? V::Load(src + kBitReversed16[i] * src_stride)
                                        : V::Zero();
  TransposeBlock16<V>(r);
  alignas(16) int8_t t[16][16];
  for (int i = 0; i < 16; ++i) V::Store(t[i], r[i]);
  for (int i = 0; i < positions; ++i) std::memcpy(dst + i * dst_stride, t[i], channels);
}

// [channel][position] -> NHWC in 16x16 blocks, the edges too: done a byte at a time they
// cost as much as the rest, since a tile's runs of positions are rarely multiples of 16
// (rows of 34 positions cut into tiles of 64).
template <class V>
void Qs8TransposeBytes16(const int8_t* src, int src_stride, int rows, int cols, int8_t* dst,
                         int64_t dst_stride) {
  for (int c = 0; c < rows; c += 16) {
    const int channels = rows - c < 16 ? rows - c : 16;
    int p = 0;
    if (channels == 16)
      for (; p + 16 <= cols; p += 16)
        TransposePositions16<V>(src + c * src_stride + p, src_stride, 16,
                                dst + p * dst_stride + c, dst_stride);
    if (cols - p < 5 && channels == 16) {  // a few positions: byte moves cost less
      for (; p < cols; ++p)
#pragma GCC unroll 16
        for (int i = 0; i < 16; ++i) dst[p * dst_stride + c + i] = src[(c + i) * src_stride + p];
      continue;
    }
    if (channels == 16) {
      if (p < cols)
        TransposePositions16<V>(src + c * src_stride + p, src_stride, cols - p,
                                dst + p * dst_stride + c, dst_stride);
      continue;
    }
    for (; p < cols; p += 16)
      TransposeEdge16<V>(src + c * src_stride + p, src_stride, channels,
                         cols - p < 16 ? cols - p : 16, dst + p * dst_stride + c, dst_stride);
  }
}

}  // namespace
}  // namespace hybrid_sparse

#endif  // TFLITE_OPS_KERNELS_QS8_TRANSPOSE_BYTES_H_
