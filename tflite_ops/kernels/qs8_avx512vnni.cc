// qs8 microkernel for AVX-512 VNNI: vpdpbusd sums, per 32-bit lane, the 4 products of a word
// of 4 uint8 inputs and a word of 4 int8 weights; lanes are output positions, so one nonzero
// is a weight broadcast and one vpdpbusd per 16 positions. Requantization is TFLite's, in
// vector form (bit-exact with MultiplyByQuantizedMultiplier at either rounding).
#include <immintrin.h>

#include "tflite_ops/kernels/sparse_conv.h"

namespace hybrid_sparse {
namespace {

constexpr int kVectors = 4;  // 64 positions: 4 accumulators, loads overlap the dot products
constexpr int kTile = 16 * kVectors;

// (int64) a * m of the even (odd) 32-bit lanes, as eight 64-bit lanes.
inline void Products(__m512i a, __m512i m, __m512i* even, __m512i* odd) {
  *even = _mm512_mul_epi32(a, m);
  *odd = _mm512_mul_epi32(_mm512_srli_epi64(a, 32), m);
}

// The low 32 bits of the 64-bit lanes of even and odd, interleaved back into 16 lanes.
inline __m512i Interleave(__m512i even, __m512i odd) {
  return _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
}

inline __m512i DoubleHighMul(__m512i p) {
  const __m512i zero = _mm512_setzero_si512();
  const __mmask8 negative = _mm512_cmplt_epi64_mask(p, zero);
  p = _mm512_add_epi64(p, _mm512_mask_blend_epi64(negative, _mm512_set1_epi64(int64_t{1} << 30),
                                                  _mm512_set1_epi64(1 - (int64_t{1} << 30))));
  // Division by 2^31 truncating towards zero, as C's: negative values round up first.
  const __mmask8 still_negative = _mm512_cmplt_epi64_mask(p, zero);
  p = _mm512_mask_add_epi64(p, still_negative, p, _mm512_set1_epi64((int64_t{1} << 31) - 1));
  return _mm512_srai_epi64(p, 31);
}

inline __m512i Requantize(__m512i acc, int32_t multiplier, int32_t shift, Rounding rounding) {
  const __m512i m = _mm512_set1_epi64(multiplier);
  __m512i even, odd;
  if (rounding == Rounding::kSingle) {
    const int total = 31 - shift;
    const __m512i round = _mm512_set1_epi64(int64_t{1} << (total - 1));
    const __m128i count = _mm_cvtsi32_si128(total);
    Products(acc, m, &even, &odd);
    return Interleave(_mm512_sra_epi64(_mm512_add_epi64(even, round), count),
                      _mm512_sra_epi64(_mm512_add_epi64(odd, round), count));
  }
  if (shift > 0) acc = _mm512_sll_epi32(acc, _mm_cvtsi32_si128(shift));
  Products(acc, m, &even, &odd);
  const __m512i high = Interleave(DoubleHighMul(even), DoubleHighMul(odd));
  const int right = shift > 0 ? 0 : -shift;
  if (right == 0) return high;
  const __m512i mask = _mm512_set1_epi32(static_cast<int32_t>((int64_t{1} << right) - 1));
  const __m512i remainder = _mm512_and_si512(high, mask);
  const __mmask16 negative = _mm512_cmplt_epi32_mask(high, _mm512_setzero_si512());
  const __m512i threshold = _mm512_mask_add_epi32(_mm512_srai_epi32(mask, 1), negative,
                                                  _mm512_srai_epi32(mask, 1),
                                                  _mm512_set1_epi32(1));
  const __m512i shifted = _mm512_sra_epi32(high, _mm_cvtsi32_si128(right));
  return _mm512_mask_add_epi32(shifted, _mm512_cmpgt_epi32_mask(remainder, threshold), shifted,
                               _mm512_set1_epi32(1));
}

}  // namespace

void Qs8SpmmAvx512Vnni(const Qs8SpmmFilter& f, const uint32_t* x, int8_t* y) {
  const Qs8Requantization& q = *f.requantization;
  const __m512i zero_point = _mm512_set1_epi32(q.output_zero_point);
  const __m512i lo = _mm512_set1_epi32(q.min), hi = _mm512_set1_epi32(q.max);
  for (int c = 0; c < f.num_channels; ++c) {
    __m512i acc[kVectors];
    for (int v = 0; v < kVectors; ++v) acc[v] = _mm512_set1_epi32(f.bias[c]);
    for (int32_t j = f.row_begin[c]; j < f.row_end[c]; ++j) {
      const __m512i w = _mm512_set1_epi32(f.values[j]);
      const uint32_t* p = x + f.offset[j];
      for (int v = 0; v < kVectors; ++v)
        acc[v] = _mm512_dpbusd_epi32(acc[v], _mm512_loadu_si512(p + 16 * v), w);
    }
    for (int v = 0; v < kVectors; ++v) {
      __m512i r = _mm512_add_epi32(Requantize(acc[v], q.multiplier[c], q.shift[c], q.rounding),
                                   zero_point);
      r = _mm512_min_epi32(_mm512_max_epi32(r, lo), hi);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(y + c * kTile + 16 * v), _mm512_cvtepi32_epi8(r));
    }
  }
}

}  // namespace hybrid_sparse
