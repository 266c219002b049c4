// x86-64 AVX2+FMA microkernel: 32 output positions (4 ymm) x up to 2 channels per pass; 16
// registers leave no room for more accumulators.
#include <immintrin.h>

#include "tflite_ops/kernels/spmm_fixed_width.h"

namespace hybrid_sparse {
namespace {

struct Avx2 {
  using Vec = __m256;
  static constexpr int kLanes = 8, kTile = 32, kMaxRows = 2;
  static Vec Load(const float* p) { return _mm256_loadu_ps(p); }
  static void Store(float* p, Vec v) { _mm256_storeu_ps(p, v); }
  static Vec Set1(float v) { return _mm256_set1_ps(v); }
  static Vec Fma(Vec a, Vec b, Vec acc) { return _mm256_fmadd_ps(a, b, acc); }
  static Vec Add(Vec a, Vec b) { return _mm256_add_ps(a, b); }
  static Vec Min(Vec a, Vec b) { return _mm256_min_ps(a, b); }
  static Vec Max(Vec a, Vec b) { return _mm256_max_ps(a, b); }
};

}  // namespace

void SpmmAvx2(const SpmmFilter& f, const float* x, float* y) {
  spmm_internal::SpmmFixedWidth<Avx2>(f, x, y);
}

}  // namespace hybrid_sparse
