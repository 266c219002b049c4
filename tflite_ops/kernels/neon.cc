// AArch64 NEON microkernel: 16 output positions (4 q registers) x up to 4 channels per pass
// (16 accumulators of the 32 registers).
#include <arm_neon.h>

#include "tflite_ops/kernels/spmm_fixed_width.h"

namespace hybrid_sparse {
namespace {

struct Neon {
  using Vec = float32x4_t;
  static constexpr int kLanes = 4, kTile = 16, kMaxRows = 4;
  static constexpr int kChains = 16, kMaxAccumulators = 28;
  static Vec Load(const float* p) { return vld1q_f32(p); }
  static void Store(float* p, Vec v) { vst1q_f32(p, v); }
  static Vec Set1(float v) { return vdupq_n_f32(v); }
  static Vec Fma(Vec a, Vec b, Vec acc) { return vfmaq_f32(acc, a, b); }
  static Vec Add(Vec a, Vec b) { return vaddq_f32(a, b); }
  static Vec Min(Vec a, Vec b) { return vminq_f32(a, b); }
  static Vec Max(Vec a, Vec b) { return vmaxq_f32(a, b); }
};

}  // namespace

void SpmmNeon(const SpmmFilter& f, const float* x, float* y) {
  spmm_internal::SpmmFixedWidth<Neon>(f, x, y);
}

}  // namespace hybrid_sparse
