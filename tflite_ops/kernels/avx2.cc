// x86-64 AVX2+FMA microkernels: 64 output positions, computed as 4 ymm x up to 2 channels per
// pass for blocks (16 registers leave no room for more accumulators), as 8 ymm x 1 channel for
// unstructured filters (one offset and one weight broadcast per 8 loads and FMAs instead of
// per 4: the scalar work per nonzero, not the FMAs, bounded the 4-ymm pass); a wide one of
// 112 positions for unstructured filters (14 ymm, the most the register file holds beside the
// broadcast weight: the loads of a weight and an offset are shared by 14 FMAs); and a narrow
// one of 32 positions for small images.
#include <immintrin.h>

#include "tflite_ops/kernels/geometry.h"
#include "tflite_ops/kernels/spmm_fixed_width.h"

namespace hybrid_sparse {
namespace {

struct Avx2 {
  using Vec = __m256;
  static constexpr int kLanes = geometry::kAvx2.lanes, kTile = geometry::kAvx2.tile,
                       kPass = geometry::kAvx2.pass, kMaxRows = geometry::kAvx2.max_rows;
  static constexpr int kChains = 12, kMaxAccumulators = 14;
  static Vec Load(const float* p) { return _mm256_loadu_ps(p); }
  static void Store(float* p, Vec v) { _mm256_storeu_ps(p, v); }
  static Vec Set1(float v) { return _mm256_set1_ps(v); }
  static Vec Fma(Vec a, Vec b, Vec acc) { return _mm256_fmadd_ps(a, b, acc); }
  static Vec Add(Vec a, Vec b) { return _mm256_add_ps(a, b); }
  static Vec Min(Vec a, Vec b) { return _mm256_min_ps(a, b); }
  static Vec Max(Vec a, Vec b) { return _mm256_max_ps(a, b); }
};

// Eight accumulators in one set: eight chains cover a 4-cycle FMA latency at two per cycle.
struct Avx2Unstructured : Avx2 {
  static_assert(geometry::kAvx2Unstructured.tile == geometry::kAvx2.tile, "one tile");
  static constexpr int kPass = geometry::kAvx2Unstructured.pass,
                       kMaxRows = geometry::kAvx2Unstructured.max_rows, kChains = 8;
};

struct Avx2Wide : Avx2 {
  static constexpr int kTile = geometry::kAvx2Wide.tile, kPass = geometry::kAvx2Wide.pass,
                       kMaxRows = geometry::kAvx2Wide.max_rows, kChains = 8;
  static constexpr int kMaxAccumulators = 15;
};

struct Avx2Narrow : Avx2 {
  static_assert(geometry::kAvx2Narrow.max_rows == geometry::kAvx2.max_rows, "inherited");
  static constexpr int kTile = geometry::kAvx2Narrow.tile, kPass = geometry::kAvx2Narrow.pass;
};

// Rows r[0..7] become columns.
inline void Transpose8x8(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
  r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
  r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
  r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
  r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

// Zeroes the inputs below an activation threshold, per column (input channel).
inline void Threshold(__m256 t, __m256 r[8]) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i)
    r[i] = _mm256_and_ps(r[i], _mm256_cmp_ps(_mm256_and_ps(r[i], abs_mask), t, _CMP_GE_OQ));
}

// The first n < 8 floats of v, without a masked store (microcoded and slow on AMD cores).
inline void StorePartial(float* out, __m256 v, int n) {
  __m128 part = _mm256_castps256_ps128(v);
  if (n >= 4) {
    _mm_storeu_ps(out, part);
    out += 4;
    n -= 4;
    part = _mm256_extractf128_ps(v, 1);
  }
  if (n >= 2) {
    _mm_storel_pi(reinterpret_cast<__m64*>(out), part);
    out += 2;
    n -= 2;
    part = _mm_movehl_ps(part, part);
  }
  if (n >= 1) _mm_store_ss(out, part);
}

}  // namespace

// Whole 8x8 blocks take a path with every loop unrolled, so that the block stays in
// registers (runtime-bounded loops spilled it to the stack and ran 2-3x slower). Ragged edges
// use masked loads and partial stores, never touching memory outside the matrices.
void TransposeAvx2(const float* src, int64_t src_stride, int rows, int cols,
                   const float* thresholds, float* dst, int64_t dst_stride) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int p = 0; p < rows; p += 8) {
    const int np = rows - p < 8 ? rows - p : 8;
    int c = 0;
    if (np == 8) {
      for (; c + 8 <= cols; c += 8) {
        __m256 r[8];
#pragma GCC unroll 8
        for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + (p + i) * src_stride + c);
        if (thresholds != nullptr) Threshold(_mm256_loadu_ps(thresholds + c), r);
        Transpose8x8(r);
#pragma GCC unroll 8
        for (int i = 0; i < 8; ++i) _mm256_storeu_ps(dst + (c + i) * dst_stride + p, r[i]);
      }
    }
    for (; c < cols; c += 8) {
      const int nc = cols - c < 8 ? cols - c : 8;
      const __m256i load_mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(nc), lane);
      __m256 r[8];
#pragma GCC unroll 8
      for (int i = 0; i < 8; ++i)
        r[i] = i < np ? _mm256_maskload_ps(src + (p + i) * src_stride + c, load_mask)
                      : _mm256_setzero_ps();
      if (thresholds != nullptr) Threshold(_mm256_maskload_ps(thresholds + c, load_mask), r);
      Transpose8x8(r);
#pragma GCC unroll 8
      for (int i = 0; i < 8; ++i) {
        if (i >= nc) break;
        float* out = dst + (c + i) * dst_stride + p;
        if (np == 8) {
          _mm256_storeu_ps(out, r[i]);
        } else {
          StorePartial(out, r[i], np);
        }
      }
    }
  }
}

void SpmmAvx2Narrow(const SpmmFilter& f, const float* x, float* y) {
  spmm_internal::SpmmFixedWidth<Avx2Narrow>(f, x, y);
}

void SpmmAvx2Wide(const SpmmFilter& f, const float* x, float* y) {
  spmm_internal::SpmmFixedWidth<Avx2Wide>(f, x, y);
}

void SpmmAvx2(const SpmmFilter& f, const float* x, float* y) {
  if (f.block_size == 1) {
    spmm_internal::SpmmFixedWidth<Avx2Unstructured>(f, x, y);
  } else {
    spmm_internal::SpmmFixedWidth<Avx2>(f, x, y);
  }
}

}  // namespace hybrid_sparse
