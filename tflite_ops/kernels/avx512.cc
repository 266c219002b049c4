// x86-64 AVX-512F microkernels: 64 output positions (4 zmm) x up to 4 channels per pass, so a
// pass holds 16 accumulators of the 32 registers and every weight is one broadcast for 64
// positions; and a narrow one of 32 positions for small images.
#include <immintrin.h>

#include "tflite_ops/kernels/geometry.h"
#include "tflite_ops/kernels/spmm_fixed_width.h"

namespace hybrid_sparse {
namespace {

struct Avx512 {
  using Vec = __m512;
  static constexpr int kLanes = geometry::kAvx512.lanes, kTile = geometry::kAvx512.tile,
                       kPass = geometry::kAvx512.pass, kMaxRows = geometry::kAvx512.max_rows;
  // Eight chains cover a 4-cycle FMA latency at two ZMM FMAs per cycle (Zen 4 issues one);
  // 16 only added partial sums to reduce per row on unstructured filters (slower).
  static constexpr int kChains = 8, kMaxAccumulators = 28;
  static Vec Load(const float* p) { return _mm512_loadu_ps(p); }
  static void Store(float* p, Vec v) { _mm512_storeu_ps(p, v); }
  static Vec Set1(float v) { return _mm512_set1_ps(v); }
  static Vec Fma(Vec a, Vec b, Vec acc) { return _mm512_fmadd_ps(a, b, acc); }
  static Vec Add(Vec a, Vec b) { return _mm512_add_ps(a, b); }
  static Vec Min(Vec a, Vec b) { return _mm512_min_ps(a, b); }
  static Vec Max(Vec a, Vec b) { return _mm512_max_ps(a, b); }
};

struct Avx512Narrow : Avx512 {
  static_assert(geometry::kAvx512Narrow.max_rows == geometry::kAvx512.max_rows, "inherited");
  static constexpr int kTile = geometry::kAvx512Narrow.tile, kPass = geometry::kAvx512Narrow.pass;
};

}  // namespace

// Unstructured filters take AVX2's narrow body (4 ymm per row, the same 32 positions): each
// nonzero loads its inputs at an arbitrary float offset, and a 64-byte load there always splits
// a cache line where a 32-byte one does half the time (two zmm per row ran slower than four
// ymm).
void SpmmAvx512Narrow(const SpmmFilter& f, const float* x, float* y) {
  if (f.block_size == 1) {
    SpmmAvx2Narrow(f, x, y);
  } else {
    spmm_internal::SpmmFixedWidth<Avx512Narrow>(f, x, y);
  }
}

void SpmmAvx512(const SpmmFilter& f, const float* x, float* y) {
  spmm_internal::SpmmFixedWidth<Avx512>(f, x, y);
}

}  // namespace hybrid_sparse
