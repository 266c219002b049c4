// qs8 microkernel for AVX-512 VNNI: vpdpbusd sums, per 32-bit lane, the 4 products of a word
// of 4 uint8 inputs and a word of 4 int8 weights; lanes are output positions, so one nonzero
// is a weight broadcast and one vpdpbusd per 16 positions. Requantization is TFLite's, in
// vector form (bit-exact with MultiplyByQuantizedMultiplier at either rounding).
#include <immintrin.h>

#include "tflite_ops/kernels/geometry.h"
#include "tflite_ops/kernels/qs8_transpose_x86.h"
#include "tflite_ops/kernels/sparse_conv.h"

// GCC 12's 512-bit intrinsics (unpacks, extracts, min/max) pass an undefined merge source,
// which its own (maybe-)uninitialized warnings report.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace hybrid_sparse {
namespace {


// TFLite's requantization of one channel's kVectors accumulators in place, then its output
// zero point and fused clamp (a narrow that saturates does int8's own range). Constants and
// branches are made once per channel: per vector, they cost as much as the arithmetic. Always
// inlined: GCC called it from the block kernel, the accumulators passing through memory.
//
// Double rounding exactly, in fewer steps. p = acc * multiplier (int64). TFLite's rounding
// doubling high multiply, (p + nudge) / 2^31 truncated with nudge = p >= 0 ? 2^30 : 1 - 2^30,
// is h = floor((p + 2^30) / 2^31) for every p (ties up, on either sign); its rounding divide
// by 2^r (ties away from zero) is (h + 2^(r-1) - [h < 0]) >> r. Both roundings' constants
// go in one 64-bit add (2^(r-1) * 2^31 = 2^(30+r)), whose bits 31-62 are then h + 2^(r-1): the
// even lanes' by a shift right, the odd lanes' in the high half by doubling. [h < 0] is
// [h + 2^(r-1) < 2^(r-1)]. This holds while h + 2^(r-1) fits in 32 bits; the plan sends
// layers whose accumulators could reach that to the reference (qs8_conv_plan.cc).
// qs8_reference.cc keeps TFLite's literal form; the kernel tests hold the two to each other.
//
// Where the result is one floor in 64 bits, floor((a * multiplier + k) / 2^t) with a = acc
// (or acc shifted left, wrapping, for multipliers above 1), the zero point goes into k too
// and each lane takes two integer products, two adds, two shifts and a blend. That is the
// single rounding; the double rounding without a right shift; and the double rounding
// where every negative h clamps to the fused activation's minimum (min >= the zero point,
// as after a ReLU): floor(floor(x / m) / n) = floor(x / mn) makes it
// floor((p + 2^30 + 2^(30+r)) / 2^(31+r)) for h >= 0, and for h < 0 both that and the exact
// form are <= the zero point.
template <int kVectors>
__attribute__((always_inline)) inline void RequantizeChannel(__m512i* acc, int32_t multiplier,
                                                           int32_t shift,
                                                           const Qs8Requantization& q) {
  const __m512i m = _mm512_set1_epi64(multiplier);
  const bool double_rounding = q.rounding == Rounding::kDouble;
  if (!double_rounding || shift >= 0 || q.min >= q.output_zero_point) {
    const int left = double_rounding && shift > 0 ? shift : 0;
    const int total = !double_rounding ? 31 - shift : 31 + (shift < 0 ? -shift : 0);
    int64_t k = !double_rounding ? int64_t{1} << (total - 1)
                                 : (int64_t{1} << 30) + (shift < 0 ? int64_t{1} << (total - 1) : 0);
    // |p| < 2^62: the zero point fits beside it below 2^63 while total <= 54.
    const bool folded = total <= 54;
    if (folded) k += static_cast<int64_t>(q.output_zero_point) * (int64_t{1} << total);
    const __m512i round = _mm512_set1_epi64(k);
    const __m128i left_count = _mm_cvtsi32_si128(left);
    // total >= 32: both lanes' high halves are floor(x / 2^32), then one 32-bit shift (a
    // little faster than two 64-bit ones). Else even lanes by a 64-bit shift right, odd
    // lanes' result moved into their high half by a shift left.
    const bool high = total >= 32;
    const __m128i count = _mm_cvtsi32_si128(high ? total - 32 : total);
    const __m128i odd_count = _mm_cvtsi32_si128(32 - total);
#pragma GCC unroll 8
    for (int v = 0; v < kVectors; ++v) {
      const __m512i a = left > 0 ? _mm512_sll_epi32(acc[v], left_count) : acc[v];
      const __m512i even = _mm512_add_epi64(_mm512_mul_epi32(a, m), round);
      const __m512i odd = _mm512_add_epi64(_mm512_mul_epi32(_mm512_srli_epi64(a, 32), m), round);
      acc[v] = high ? _mm512_sra_epi32(
                          _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd), count)
                    : _mm512_mask_blend_epi32(0xAAAA, _mm512_sra_epi64(even, count),
                                              _mm512_sll_epi64(odd, odd_count));
    }
    if (!folded) {
      const __m512i zero_point = _mm512_set1_epi32(q.output_zero_point);
#pragma GCC unroll 8
      for (int v = 0; v < kVectors; ++v) acc[v] = _mm512_add_epi32(acc[v], zero_point);
    }
    if (q.min != -128 || q.max != 127) {
      const __m512i lo = _mm512_set1_epi32(q.min), hi = _mm512_set1_epi32(q.max);
#pragma GCC unroll 8
      for (int v = 0; v < kVectors; ++v)
        acc[v] = _mm512_min_epi32(_mm512_max_epi32(acc[v], lo), hi);
    }
    return;
  }
  {
    // The double rounding with a right shift r, negative results not clamped away.
    const int r = -shift;  // > 0
    const __m512i round = _mm512_set1_epi64((int64_t{1} << 30) + (int64_t{1} << (30 + r)));
    const __m512i half = _mm512_set1_epi32(1 << (r - 1));
    const __m512i one = _mm512_set1_epi32(1);
    const __m128i count = _mm_cvtsi32_si128(r);
#pragma GCC unroll 8
    for (int v = 0; v < kVectors; ++v) {
      const __m512i even = _mm512_add_epi64(_mm512_mul_epi32(acc[v], m), round);
      const __m512i odd =
          _mm512_add_epi64(_mm512_mul_epi32(_mm512_srli_epi64(acc[v], 32), m), round);
      const __m512i h = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 31),
                                                _mm512_add_epi64(odd, odd));
      acc[v] = _mm512_sra_epi32(
          _mm512_mask_sub_epi32(h, _mm512_cmplt_epi32_mask(h, half), h, one), count);
    }
  }
  const __m512i zero_point = _mm512_set1_epi32(q.output_zero_point);
  if (q.min == -128 && q.max == 127) {
#pragma GCC unroll 8
    for (int v = 0; v < kVectors; ++v) acc[v] = _mm512_add_epi32(acc[v], zero_point);
  } else {
    const __m512i lo = _mm512_set1_epi32(q.min), hi = _mm512_set1_epi32(q.max);
#pragma GCC unroll 8
    for (int v = 0; v < kVectors; ++v)
      acc[v] = _mm512_min_epi32(_mm512_max_epi32(_mm512_add_epi32(acc[v], zero_point), lo), hi);
  }
}

// acc += dot(x, w) in place. GCC 12's intrinsic is not tied to its accumulator: in the
// unrolled loop it copied every accumulator out and back around each vpdpbusd.
inline void Dpbusd(__m512i& acc, __m512i x, __m512i w) {
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(x), "v"(w));
}

// acc += dot(x, w) with the weight word broadcast from memory (no register, no shuffle).
inline void DpbusdBroadcast(__m512i& acc, __m512i x, const int32_t* w) {
  asm("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(x), "m"(*w));
}

// A channel's kVectors results (int32, 16 positions each) saturated to int8 and stored as
// one run of 16 * kVectors bytes: in one store where it is 32 or 64 bytes, so that the byte
// transpose's wide load of the run is forwarded from a single store (a load covering
// several stores waits for them to reach the cache).
template <int kVectors>
inline void StoreNarrowed(const __m512i* r, int8_t* y) {
  if constexpr (kVectors == 4) {
    // Packs work per 128-bit lane: lane L ends up holding positions 4L..4L+3 of each vector
    // in turn, one dword each; the permute puts each vector's dwords back together.
    const __m512i bytes = _mm512_packs_epi16(_mm512_packs_epi32(r[0], r[1]),
                                             _mm512_packs_epi32(r[2], r[3]));
    const __m512i order =
        _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    _mm512_storeu_si512(y, _mm512_permutexvar_epi32(order, bytes));
  } else if constexpr (kVectors == 2) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y),
                        _mm256_inserti128_si256(
                            _mm256_castsi128_si256(_mm512_cvtsepi32_epi8(r[0])),
                            _mm512_cvtsepi32_epi8(r[1]), 1));
  } else {
#pragma GCC unroll 8
    for (int v = 0; v < kVectors; ++v)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(y + 16 * v), _mm512_cvtsepi32_epi8(r[v]));
  }
}

}  // namespace

namespace {

// kVectors zmm accumulators: a tile of 16 * kVectors positions. Small images take fewer (an
// 8x8 output at pitch 10 is 80 positions: two tiles of 64 compute 128, one of 80 computes 80).
template <int kVectors>
void Qs8SpmmVnni(const Qs8SpmmFilter& f, const uint32_t* x, int8_t* y) {
  constexpr int kTile = 16 * kVectors;
  const Qs8Requantization& q = *f.requantization;
  for (int c = 0; c < f.num_channels; ++c) {
    if (f.row_begin[c] == f.row_end[c]) continue;  // a constant the plan wrote
    // Unrolled so that the accumulators stay in registers (a loop over them was not).
    __m512i acc[kVectors];
#pragma GCC unroll 8
    for (int v = 0; v < kVectors; ++v) acc[v] = _mm512_set1_epi32(f.bias[c]);
    for (int32_t j = f.row_begin[c]; j < f.row_end[c]; ++j) {
      const __m512i w = _mm512_set1_epi32(f.values[j]);
      const uint32_t* p = x + f.offset[j];
#pragma GCC unroll 8
      for (int v = 0; v < kVectors; ++v) Dpbusd(acc[v], _mm512_loadu_si512(p + 16 * v), w);
    }
    RequantizeChannel<kVectors>(acc, q.multiplier[c], q.shift[c], q);
    StoreNarrowed<kVectors>(acc, y + c * kTile);
  }
}

// Blocks of 4 channels sharing a pattern: a nonzero's kVectors input loads each feed 4
// vpdpbusd, their weights broadcast from memory by the instruction itself. The rows kernel
// above is bound by its loads (most cross a cache line, load_fma.md); this one by vpdpbusd.
template <int kVectors>
void Qs8SpmmVnniBlock(const Qs8SpmmFilter& f, const uint32_t* x, int8_t* y) {
  constexpr int kTile = 16 * kVectors;
  constexpr int kRows = geometry::kQs8BlockRows;
  static_assert(kRows == 4, "the block loop is written for 4 rows");
  const Qs8Requantization& q = *f.requantization;
  for (int b = 0; b < f.num_channels / kRows; ++b) {
    if (f.row_begin[b] == f.row_end[b]) continue;  // constants the plan wrote
    __m512i acc[kRows][kVectors];
#pragma GCC unroll 4
    for (int r = 0; r < kRows; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < kVectors; ++v) acc[r][v] = _mm512_set1_epi32(f.bias[b * kRows + r]);
    for (int32_t j = f.row_begin[b]; j < f.row_end[b]; ++j) {
      const uint32_t* p = x + f.offset[j];
      const int32_t* w = f.values + static_cast<size_t>(j) * kRows;
#pragma GCC unroll 4
      for (int v = 0; v < kVectors; ++v) {
        const __m512i in = _mm512_loadu_si512(p + 16 * v);
#pragma GCC unroll 4
        for (int r = 0; r < kRows; ++r) DpbusdBroadcast(acc[r][v], in, w + r);
      }
    }
#pragma GCC unroll 4
    for (int r = 0; r < kRows; ++r) {
      const int c = b * kRows + r;
      RequantizeChannel<kVectors>(acc[r], q.multiplier[c], q.shift[c], q);
      StoreNarrowed<kVectors>(acc[r], y + c * kTile);
    }
  }
}

}  // namespace

static constexpr const geometry::Qs8& kG = geometry::kQs8Avx512Vnni;
static_assert(kG.lanes == 16, "zmm lanes");
const Qs8Kernels kQs8Avx512Vnni = {
    kG.name,
    {{kG.tiles[0], Qs8SpmmVnni<kG.tiles[0] / kG.lanes>},
     {kG.tiles[1], Qs8SpmmVnni<kG.tiles[1] / kG.lanes>},
     {kG.tiles[2], Qs8SpmmVnni<kG.tiles[2] / kG.lanes>},
     {kG.tiles[3], Qs8SpmmVnni<kG.tiles[3] / kG.lanes>},
     {kG.tiles[4], Qs8SpmmVnni<kG.tiles[4] / kG.lanes>},
     {kG.tiles[5], Qs8SpmmVnni<kG.tiles[5] / kG.lanes>},
     {kG.tiles[6], Qs8SpmmVnni<kG.tiles[6] / kG.lanes>},
     {kG.tiles[7], Qs8SpmmVnni<kG.tiles[7] / kG.lanes>}},
    kG.lanes,
    true,
    Qs8TransposeAvx512,
    {{kG.block_tiles[0], Qs8SpmmVnniBlock<kG.block_tiles[0] / kG.lanes>},
     {kG.block_tiles[1], Qs8SpmmVnniBlock<kG.block_tiles[1] / kG.lanes>},
     {kG.block_tiles[2], Qs8SpmmVnniBlock<kG.block_tiles[2] / kG.lanes>},
     {kG.block_tiles[3], Qs8SpmmVnniBlock<kG.block_tiles[3] / kG.lanes>}},
};
static_assert(kG.block_tiles[4] == 0, "four block tiles");

namespace {

template <int kLanes>
struct WideRegister;
template <>
struct WideRegister<2> { using T = __m256i; };
template <>
struct WideRegister<4> { using T = __m512i; };

// The 16x16 algorithm on ymm or zmm registers: their unpacks work per 128-bit lane, so one
// network transposes 2 or 4 blocks of 16 channels x 16 positions side by side (a channel's
// 32 or 64 positions are one load), for half or a quarter of the shuffles per byte.
template <int kLanes>
struct WideBytes {
  using T = typename WideRegister<kLanes>::T;
  static T Load(const int8_t* p) {
    if constexpr (kLanes == 4) return _mm512_loadu_si512(p);
    else return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  }
  static void StoreLane(int8_t* p, T v, int lane) {
    __m128i x;
    if constexpr (kLanes == 4) {
      switch (lane) {
        case 0: x = _mm512_castsi512_si128(v); break;
        case 1: x = _mm512_extracti32x4_epi32(v, 1); break;
        case 2: x = _mm512_extracti32x4_epi32(v, 2); break;
        default: x = _mm512_extracti32x4_epi32(v, 3); break;
      }
    } else {
      x = lane == 0 ? _mm256_castsi256_si128(v) : _mm256_extracti128_si256(v, 1);
    }
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), x);
  }
  template <int kBits, bool kHigh>
  static T Zip(T a, T b) {
    if constexpr (kLanes == 4) {
      if (kBits == 8) return kHigh ? _mm512_unpackhi_epi8(a, b) : _mm512_unpacklo_epi8(a, b);
      if (kBits == 16) return kHigh ? _mm512_unpackhi_epi16(a, b) : _mm512_unpacklo_epi16(a, b);
      if (kBits == 32) return kHigh ? _mm512_unpackhi_epi32(a, b) : _mm512_unpacklo_epi32(a, b);
      return kHigh ? _mm512_unpackhi_epi64(a, b) : _mm512_unpacklo_epi64(a, b);
    } else {
      if (kBits == 8) return kHigh ? _mm256_unpackhi_epi8(a, b) : _mm256_unpacklo_epi8(a, b);
      if (kBits == 16) return kHigh ? _mm256_unpackhi_epi16(a, b) : _mm256_unpacklo_epi16(a, b);
      if (kBits == 32) return kHigh ? _mm256_unpackhi_epi32(a, b) : _mm256_unpacklo_epi32(a, b);
      return kHigh ? _mm256_unpackhi_epi64(a, b) : _mm256_unpacklo_epi64(a, b);
    }
  }
};

// 16 channels x up to 16 * kLanes positions (`positions` > 16 * (kLanes - 1): the loads read
// at most 15 bytes past the last, within kQs8TransposeSlack). Row i of lane k is position
// 16 k + i.
template <int kLanes>
inline void TransposeWide(const int8_t* src, int src_stride, int positions, int8_t* dst,
                          int64_t dst_stride) {
  using W = WideBytes<kLanes>;
  typename W::T r[16];
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) r[i] = W::Load(src + kBitReversed16[i] * src_stride);
  TransposeBlock16<W>(r);
#pragma GCC unroll 4
  for (int k = 0; k < kLanes; ++k)
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i)
      if (16 * k + i < positions) W::StoreLane(dst + (16 * k + i) * dst_stride, r[i], k);
}

}  // namespace

// 32 registers (AVX-512): a round's 16 rows and 16 temporaries need no stack. Whole groups
// of 16 channels go 64 or 32 positions at a time; the rest (fewer positions, a last group of
// fewer channels) as 16x16 blocks.
void Qs8TransposeAvx512(const int8_t* src, int src_stride, int rows, int cols, int8_t* dst,
                        int64_t dst_stride) {
  const int whole = cols > 16 ? rows / 16 * 16 : 0;
  for (int c = 0; c < whole; c += 16) {
    const int8_t* s = src + c * src_stride;
    int8_t* d = dst + c;
    int p = 0;
    for (; cols - p > 48; p += 64)
      TransposeWide<4>(s + p, src_stride, cols - p < 64 ? cols - p : 64, d + p * dst_stride,
                       dst_stride);
    if (cols - p > 16) {
      TransposeWide<2>(s + p, src_stride, cols - p < 32 ? cols - p : 32, d + p * dst_stride,
                       dst_stride);
      p = cols < p + 32 ? cols : p + 32;
    }
    if (p < cols)
      Qs8TransposeBytes16<Sse2Bytes>(s + p, src_stride, 16, cols - p, d + p * dst_stride,
                                     dst_stride);
  }
  if (whole < rows)
    Qs8TransposeBytes16<Sse2Bytes>(src + whole * src_stride, src_stride, rows - whole, cols,
                                   dst + whole, dst_stride);
}

}  // namespace hybrid_sparse
