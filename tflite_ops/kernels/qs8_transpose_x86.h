// The byte transpose's 16-byte vectors on x86: SSE2's unpacks, shared by the AVX2 and AVX-512
// files (each compiles its own copy, qs8_transpose_bytes.h).
#ifndef TFLITE_OPS_KERNELS_QS8_TRANSPOSE_X86_H_
#define TFLITE_OPS_KERNELS_QS8_TRANSPOSE_X86_H_

#include <emmintrin.h>

#include <cstdint>

#include "tflite_ops/kernels/qs8_transpose_bytes.h"

namespace hybrid_sparse {
namespace {

struct Sse2Bytes {
  using T = __m128i;
  static T Load(const int8_t* p) { return _mm_loadu_si128(reinterpret_cast<const T*>(p)); }
  static void Store(int8_t* p, T v) { _mm_storeu_si128(reinterpret_cast<T*>(p), v); }
  static T Zero() { return _mm_setzero_si128(); }
  template <int kBits, bool kHigh>
  static T Zip(T a, T b) {
    if (kBits == 8) return kHigh ? _mm_unpackhi_epi8(a, b) : _mm_unpacklo_epi8(a, b);
    if (kBits == 16) return kHigh ? _mm_unpackhi_epi16(a, b) : _mm_unpacklo_epi16(a, b);
    if (kBits == 32) return kHigh ? _mm_unpackhi_epi32(a, b) : _mm_unpacklo_epi32(a, b);
    return kHigh ? _mm_unpackhi_epi64(a, b) : _mm_unpacklo_epi64(a, b);
  }
};

}  // namespace
}  // namespace hybrid_sparse

#endif  // TFLITE_OPS_KERNELS_QS8_TRANSPOSE_X86_H_
