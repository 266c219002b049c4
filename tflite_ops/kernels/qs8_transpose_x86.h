// The qs8 results' byte transpose for x86 (SSE2 instructions only), shared by the ISA files
// that include it: [channel][position] -> NHWC.
#ifndef TFLITE_OPS_KERNELS_QS8_TRANSPOSE_X86_H_
#define TFLITE_OPS_KERNELS_QS8_TRANSPOSE_X86_H_

#include <emmintrin.h>

#include <cstdint>
#include <cstring>

namespace hybrid_sparse {
// Internal linkage: each ISA file gets its own copy, compiled with its flags (one inline
// definition shared by the linker could carry AVX-512 encodings into the AVX2 path).
namespace {

// One round of the 16x16 byte transpose: rows i and i + 8 interleaved at one width.
template <__m128i (*Lo)(__m128i, __m128i), __m128i (*Hi)(__m128i, __m128i)>
inline void Interleave16(__m128i* r) {
  __m128i t[16];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = Lo(r[i], r[i + 8]);
    t[2 * i + 1] = Hi(r[i], r[i + 8]);
  }
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) r[i] = t[i];
}

inline __m128i Lo8(__m128i a, __m128i b) { return _mm_unpacklo_epi8(a, b); }
inline __m128i Hi8(__m128i a, __m128i b) { return _mm_unpackhi_epi8(a, b); }
inline __m128i Lo16(__m128i a, __m128i b) { return _mm_unpacklo_epi16(a, b); }
inline __m128i Hi16(__m128i a, __m128i b) { return _mm_unpackhi_epi16(a, b); }
inline __m128i Lo32(__m128i a, __m128i b) { return _mm_unpacklo_epi32(a, b); }
inline __m128i Hi32(__m128i a, __m128i b) { return _mm_unpackhi_epi32(a, b); }
inline __m128i Lo64(__m128i a, __m128i b) { return _mm_unpacklo_epi64(a, b); }
inline __m128i Hi64(__m128i a, __m128i b) { return _mm_unpackhi_epi64(a, b); }

// One 16x16 block, its rows loaded in bit-reversed order: four rounds of interleaving rows i
// and i + 8 leave row i's bytes in bit-reversed lane order, so the result is the transpose.
inline void TransposeBlock16(__m128i* r) {
  Interleave16<Lo8, Hi8>(r);
  Interleave16<Lo16, Hi16>(r);
  Interleave16<Lo32, Hi32>(r);
  Interleave16<Lo64, Hi64>(r);
}

constexpr int kBitReversed16[16] = {0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15};

// A whole 16x16 block: its rows stay in registers (fully unrolled, constant indices).
inline void TransposeWhole16(const int8_t* src, int src_stride, int8_t* dst,
                             int64_t dst_stride) {
  __m128i r[16];
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i)
    r[i] = _mm_loadu_si128(
        reinterpret_cast<const __m128i*>(src + kBitReversed16[i] * src_stride));
  TransposeBlock16(r);
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i * dst_stride), r[i]);
}

// A block at an edge (fewer than 16 channels or positions): loads whole rows of the channels
// there are (reading up to 15 bytes past the last position, which Qs8TransposeFn allows),
// transposes through a buffer and copies out only the bytes that belong to the block (a
// whole row would write over the next position's first channels). Apart from the whole
// blocks: indexed at run time, their registers would go to the stack.
__attribute__((noinline)) inline void TransposeEdge16(const int8_t* src, int src_stride,
                                                      int channels, int positions, int8_t* dst,
                                                      int64_t dst_stride) {
  __m128i r[16];
  for (int i = 0; i < 16; ++i)
    r[i] = kBitReversed16[i] < channels
               ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(
                     src + kBitReversed16[i] * src_stride))
               : _mm_setzero_si128();
  TransposeBlock16(r);
  alignas(16) int8_t t[16][16];
  for (int i = 0; i < 16; ++i) _mm_store_si128(reinterpret_cast<__m128i*>(t[i]), r[i]);
  for (int i = 0; i < positions; ++i) std::memcpy(dst + i * dst_stride, t[i], channels);
}

// [channel][position] -> NHWC in 16x16 blocks, the edges too: done a byte at a time they
// cost as much as the rest, since a tile's runs of positions are rarely multiples of 16
// (rows of 34 positions cut into tiles of 64). Inline so that each ISA file compiles it for
// its own register file.
inline void Qs8TransposeBytes16(const int8_t* src, int src_stride, int rows, int cols,
                                int8_t* dst, int64_t dst_stride) {
  for (int c = 0; c < rows; c += 16) {
    const int channels = rows - c < 16 ? rows - c : 16;
    int p = 0;
    if (channels == 16)
      for (; p + 16 <= cols; p += 16)
        TransposeWhole16(src + c * src_stride + p, src_stride, dst + p * dst_stride + c,
                         dst_stride);
    if (cols - p < 8 && channels == 16) {  // a few positions: byte moves cost less
      for (; p < cols; ++p)
#pragma GCC unroll 16
        for (int i = 0; i < 16; ++i) dst[p * dst_stride + c + i] = src[(c + i) * src_stride + p];
      continue;
    }
    for (; p < cols; p += 16)
      TransposeEdge16(src + c * src_stride + p, src_stride, channels,
                      cols - p < 16 ? cols - p : 16, dst + p * dst_stride + c, dst_stride);
  }
}

}  // namespace
}  // namespace hybrid_sparse

#endif  // TFLITE_OPS_KERNELS_QS8_TRANSPOSE_X86_H_
