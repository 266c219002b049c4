// The qs8 results' byte transpose for x86 (SSE2 instructions only), shared by the ISA files
// that include it: [channel][position] -> NHWC.
#ifndef TFLITE_OPS_KERNELS_QS8_TRANSPOSE_X86_H_
#define TFLITE_OPS_KERNELS_QS8_TRANSPOSE_X86_H_

#include <emmintrin.h>

#include <cstdint>

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

// 16x16 blocks: four rounds of interleaves in xmm registers. Inline so that each ISA file
// compiles it for its own register file.
inline void Qs8TransposeBytes16(const int8_t* src, int src_stride, int rows, int cols,
                                int8_t* dst, int64_t dst_stride) {
  int c = 0;
  for (; c + 16 <= rows; c += 16) {
    int p = 0;
    for (; p + 16 <= cols; p += 16) {
      // Four rounds of interleaving rows i and i + 8 leave row i's bytes in bit-reversed
      // lane order: loading row bitrev(i) into r[i] makes the result the transpose.
      static constexpr int kBitReversed[16] = {0, 8, 4, 12, 2, 10, 6, 14,
                                               1, 9, 5, 13, 3, 11, 7, 15};
      __m128i r[16];
#pragma GCC unroll 16
      for (int i = 0; i < 16; ++i)
        r[i] = _mm_loadu_si128(
            reinterpret_cast<const __m128i*>(src + (c + kBitReversed[i]) * src_stride + p));
      Interleave16<Lo8, Hi8>(r);
      Interleave16<Lo16, Hi16>(r);
      Interleave16<Lo32, Hi32>(r);
      Interleave16<Lo64, Hi64>(r);
#pragma GCC unroll 16
      for (int i = 0; i < 16; ++i)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + (p + i) * dst_stride + c), r[i]);
    }
    for (; p < cols; ++p)
      for (int i = 0; i < 16; ++i) dst[p * dst_stride + c + i] = src[(c + i) * src_stride + p];
  }
  for (int p = 0; p < cols; ++p)
    for (int cc = c; cc < rows; ++cc) dst[p * dst_stride + cc] = src[cc * src_stride + p];
}

}  // namespace
}  // namespace hybrid_sparse

#endif  // TFLITE_OPS_KERNELS_QS8_TRANSPOSE_X86_H_
