// qs8 microkernel for AVX2 CPUs without VNNI. vpmaddwd multiplies 16-bit pairs, so each word
// of 4 uint8 inputs is split in place into its even and odd bytes (and, shift) and each weight
// word into the sign-extended pairs (w0, w2) and (w1, w3): two vpmaddwd per 8 positions sum
// the 4 products exactly (vpmaddubsw would saturate its 16-bit sums). Requantization is
// TFLite's, with 64-bit products from vpmuldq; AVX2 has no 64-bit arithmetic shift, so the
// single rounding's shift is made from the logical one.
#include <immintrin.h>

#include <algorithm>

#include "tflite_ops/kernels/geometry.h"
#include "tflite_ops/kernels/qs8_transpose_x86.h"
#include "tflite_ops/kernels/sparse_conv.h"

namespace hybrid_sparse {
namespace {

inline __m256i ShiftRightArithmetic64(__m256i v, __m128i count) {
  const __m256i sign = _mm256_cmpgt_epi64(_mm256_setzero_si256(), v);
  return _mm256_xor_si256(_mm256_srl_epi64(_mm256_xor_si256(v, sign), count), sign);
}

// qs8_avx512vnni.cc's RequantizeChannel (the same identities) on ymm: a channel's kVectors
// accumulators requantized in place, with the output zero point and the fused clamp. AVX2
// has no 64-bit arithmetic shift: the double rounding needs none, the single rounding only
// for shifts past 32.
template <int kVectors>
__attribute__((always_inline)) inline void RequantizeChannel(__m256i* acc, int32_t multiplier,
                                                           int32_t shift,
                                                           const Qs8Requantization& q) {
  const __m256i m = _mm256_set1_epi64x(multiplier);
  const bool double_rounding = q.rounding == Rounding::kDouble;
  const int total = double_rounding ? 31 - std::min(shift, 0) : 31 - shift;
  if (total >= 32 && total <= 54 &&
      (!double_rounding || q.min >= q.output_zero_point)) {
    // One floor((p + k) / 2^total), zero point in k (the VNNI kernel's identities): both
    // lanes' high halves are floor(x / 2^32), then one 32-bit shift.
    const int64_t k = (double_rounding ? (int64_t{1} << 30) : 0) + (int64_t{1} << (total - 1)) +
                      static_cast<int64_t>(q.output_zero_point) * (int64_t{1} << total);
    const __m256i round = _mm256_set1_epi64x(k);
    const __m128i count = _mm_cvtsi32_si128(total - 32);
#pragma GCC unroll 8
    for (int v = 0; v < kVectors; ++v) {
      const __m256i even = _mm256_add_epi64(_mm256_mul_epi32(acc[v], m), round);
      const __m256i odd =
          _mm256_add_epi64(_mm256_mul_epi32(_mm256_srli_epi64(acc[v], 32), m), round);
      acc[v] = _mm256_sra_epi32(_mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA), count);
    }
    if (q.min != -128 || q.max != 127) {
      const __m256i lo = _mm256_set1_epi32(q.min), hi = _mm256_set1_epi32(q.max);
#pragma GCC unroll 8
      for (int v = 0; v < kVectors; ++v)
        acc[v] = _mm256_min_epi32(_mm256_max_epi32(acc[v], lo), hi);
    }
    return;
  }
  if (q.rounding == Rounding::kSingle) {
    const int total = 31 - shift;
    const __m256i round = _mm256_set1_epi64x(int64_t{1} << (total - 1));
    const __m128i count = _mm_cvtsi32_si128(total);
    const bool left = total <= 32;
    const __m128i odd_count = _mm_cvtsi32_si128(left ? 32 - total : total - 32);
#pragma GCC unroll 8
    for (int v = 0; v < kVectors; ++v) {
      const __m256i even = _mm256_add_epi64(_mm256_mul_epi32(acc[v], m), round);
      const __m256i odd =
          _mm256_add_epi64(_mm256_mul_epi32(_mm256_srli_epi64(acc[v], 32), m), round);
      // Shifts of at most 32 leave no sign bits in the low halves.
      acc[v] = _mm256_blend_epi32(
          left ? _mm256_srl_epi64(even, count) : ShiftRightArithmetic64(even, count),
          left ? _mm256_sll_epi64(odd, odd_count) : ShiftRightArithmetic64(odd, odd_count),
          0xAA);
    }
  } else if (shift >= 0) {
    const __m128i count = _mm_cvtsi32_si128(shift);
    const __m256i round = _mm256_set1_epi64x(int64_t{1} << 30);
#pragma GCC unroll 8
    for (int v = 0; v < kVectors; ++v) {
      const __m256i a = _mm256_sll_epi32(acc[v], count);
      const __m256i even = _mm256_add_epi64(_mm256_mul_epi32(a, m), round);
      const __m256i odd =
          _mm256_add_epi64(_mm256_mul_epi32(_mm256_srli_epi64(a, 32), m), round);
      acc[v] = _mm256_blend_epi32(_mm256_srli_epi64(even, 31), _mm256_add_epi64(odd, odd), 0xAA);
    }
  } else {
    const int r = -shift;  // > 0
    const __m256i round =
        _mm256_set1_epi64x((int64_t{1} << 30) + (int64_t{1} << (30 + r)));
    const __m256i half = _mm256_set1_epi32(1 << (r - 1));
    const __m128i count = _mm_cvtsi32_si128(r);
#pragma GCC unroll 8
    for (int v = 0; v < kVectors; ++v) {
      const __m256i even = _mm256_add_epi64(_mm256_mul_epi32(acc[v], m), round);
      const __m256i odd =
          _mm256_add_epi64(_mm256_mul_epi32(_mm256_srli_epi64(acc[v], 32), m), round);
      const __m256i h =
          _mm256_blend_epi32(_mm256_srli_epi64(even, 31), _mm256_add_epi64(odd, odd), 0xAA);
      // h + 2^(r-1) < 2^(r-1): -1 where h < 0.
      acc[v] = _mm256_sra_epi32(_mm256_add_epi32(h, _mm256_cmpgt_epi32(half, h)), count);
    }
  }
  const __m256i zero_point = _mm256_set1_epi32(q.output_zero_point);
  if (q.min == -128 && q.max == 127) {  // the packs saturate
#pragma GCC unroll 8
    for (int v = 0; v < kVectors; ++v) acc[v] = _mm256_add_epi32(acc[v], zero_point);
  } else {
    const __m256i lo = _mm256_set1_epi32(q.min), hi = _mm256_set1_epi32(q.max);
#pragma GCC unroll 8
    for (int v = 0; v < kVectors; ++v)
      acc[v] = _mm256_min_epi32(_mm256_max_epi32(_mm256_add_epi32(acc[v], zero_point), lo), hi);
  }
}

// 8 results (int32) saturated to int8 by the packs and stored.
inline void StoreNarrowed(__m256i r, int8_t* y) {
  const __m128i words =
      _mm_packs_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(y), _mm_packs_epi16(words, words));
}

// kVectors ymm accumulators: a tile of 8 * kVectors positions.
template <int kVectors>
void Qs8SpmmAvx2(const Qs8SpmmFilter& f, const uint32_t* x, int8_t* y) {
  constexpr int kTile = 8 * kVectors;
  const Qs8Requantization& q = *f.requantization;
  const __m256i even_bytes = _mm256_set1_epi32(0x00FF00FF);
  for (int c = 0; c < f.num_channels; ++c) {
    if (f.row_begin[c] == f.row_end[c]) continue;  // a constant the plan wrote
    __m256i acc[kVectors];
#pragma GCC unroll 8
    for (int v = 0; v < kVectors; ++v) acc[v] = _mm256_set1_epi32(f.bias[c]);
    for (int32_t j = f.row_begin[c]; j < f.row_end[c]; ++j) {
      const __m256i w = _mm256_set1_epi32(f.values[j]);
      const __m256i w02 = _mm256_srai_epi16(_mm256_slli_epi16(w, 8), 8);
      const __m256i w13 = _mm256_srai_epi16(w, 8);
      const uint32_t* p = x + f.offset[j];
#pragma GCC unroll 8
      for (int v = 0; v < kVectors; ++v) {
        const __m256i in = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 8 * v));
        acc[v] = _mm256_add_epi32(
            acc[v], _mm256_add_epi32(_mm256_madd_epi16(_mm256_and_si256(in, even_bytes), w02),
                                     _mm256_madd_epi16(_mm256_srli_epi16(in, 8), w13)));
      }
    }
    RequantizeChannel<kVectors>(acc, q.multiplier[c], q.shift[c], q);
#pragma GCC unroll 8
    for (int v = 0; v < kVectors; ++v) StoreNarrowed(acc[v], y + c * kTile + 8 * v);
  }
}

// Blocks of 4 channels sharing a pattern: a nonzero's input vectors are loaded and split
// into their even and odd bytes once for the 4 channels' vpmaddwd pairs. Two vectors at most:
// 8 accumulators, 4 split inputs and a channel's 2 weight pairs fill the 16 ymm registers.
template <int kVectors>
void Qs8SpmmAvx2Block(const Qs8SpmmFilter& f, const uint32_t* x, int8_t* y) {
  constexpr int kTile = 8 * kVectors;
  constexpr int kRows = geometry::kQs8BlockRows;
  static_assert(kRows == 4 && kVectors <= 2, "the block loop is written for 4 rows");
  const Qs8Requantization& q = *f.requantization;
  const __m256i even_bytes = _mm256_set1_epi32(0x00FF00FF);
  for (int b = 0; b < f.num_channels / kRows; ++b) {
    if (f.row_begin[b] == f.row_end[b]) continue;  // constants the plan wrote
    __m256i acc[kRows][kVectors];
#pragma GCC unroll 4
    for (int r = 0; r < kRows; ++r)
#pragma GCC unroll 2
      for (int v = 0; v < kVectors; ++v) acc[r][v] = _mm256_set1_epi32(f.bias[b * kRows + r]);
    for (int32_t j = f.row_begin[b]; j < f.row_end[b]; ++j) {
      const uint32_t* p = x + f.offset[j];
      const int32_t* w = f.values + static_cast<size_t>(j) * kRows;
      __m256i even[kVectors], odd[kVectors];
#pragma GCC unroll 2
      for (int v = 0; v < kVectors; ++v) {
        const __m256i in = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 8 * v));
        even[v] = _mm256_and_si256(in, even_bytes);
        odd[v] = _mm256_srli_epi16(in, 8);
      }
#pragma GCC unroll 4
      for (int r = 0; r < kRows; ++r) {
        const __m256i word = _mm256_set1_epi32(w[r]);
        const __m256i w02 = _mm256_srai_epi16(_mm256_slli_epi16(word, 8), 8);
        const __m256i w13 = _mm256_srai_epi16(word, 8);
#pragma GCC unroll 2
        for (int v = 0; v < kVectors; ++v)
          acc[r][v] = _mm256_add_epi32(acc[r][v],
                                       _mm256_add_epi32(_mm256_madd_epi16(even[v], w02),
                                                        _mm256_madd_epi16(odd[v], w13)));
      }
    }
#pragma GCC unroll 4
    for (int r = 0; r < kRows; ++r) {
      const int c = b * kRows + r;
      RequantizeChannel<kVectors>(acc[r], q.multiplier[c], q.shift[c], q);
#pragma GCC unroll 2
      for (int v = 0; v < kVectors; ++v) StoreNarrowed(acc[r][v], y + c * kTile + 8 * v);
    }
  }
}

}  // namespace

// 16 xmm registers: the compiler keeps part of a round on the stack.
void Qs8TransposeSse2(const int8_t* src, int src_stride, int rows, int cols, int8_t* dst,
                      int64_t dst_stride) {
  Qs8TransposeBytes16<Sse2Bytes>(src, src_stride, rows, cols, dst, dst_stride);
}

static constexpr const geometry::Qs8& kG = geometry::kQs8Avx2;
static_assert(kG.lanes == 8, "ymm lanes");
const Qs8Kernels kQs8Avx2 = {
    kG.name,
    {{kG.tiles[0], Qs8SpmmAvx2<kG.tiles[0] / kG.lanes>},
     {kG.tiles[1], Qs8SpmmAvx2<kG.tiles[1] / kG.lanes>},
     {kG.tiles[2], Qs8SpmmAvx2<kG.tiles[2] / kG.lanes>},
     {kG.tiles[3], Qs8SpmmAvx2<kG.tiles[3] / kG.lanes>},
     {kG.tiles[4], Qs8SpmmAvx2<kG.tiles[4] / kG.lanes>},
     {kG.tiles[5], Qs8SpmmAvx2<kG.tiles[5] / kG.lanes>},
     {kG.tiles[6], Qs8SpmmAvx2<kG.tiles[6] / kG.lanes>},
     {kG.tiles[7], Qs8SpmmAvx2<kG.tiles[7] / kG.lanes>}},
    kG.lanes,
    true,
    Qs8TransposeSse2,
    {{kG.block_tiles[0], Qs8SpmmAvx2Block<kG.block_tiles[0] / kG.lanes>},
     {kG.block_tiles[1], Qs8SpmmAvx2Block<kG.block_tiles[1] / kG.lanes>}},
};
static_assert(kG.block_tiles[2] == 0, "two block tiles");

}  // namespace hybrid_sparse
