// AArch64 NEON microkernel: 16 output positions (4 q registers) x up to 4 channels per pass
// (16 accumulators of the 32 registers); and the 4x4-block transpose around it.
#include <arm_neon.h>

#include "tflite_ops/kernels/geometry.h"
#include "tflite_ops/kernels/spmm_fixed_width.h"

namespace hybrid_sparse {
namespace {

struct Neon {
  using Vec = float32x4_t;
  static constexpr int kLanes = geometry::kNeon.lanes, kTile = geometry::kNeon.tile,
                       kPass = geometry::kNeon.pass, kMaxRows = geometry::kNeon.max_rows;
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

// 4x4 blocks; ragged edges go to the reference.
void TransposeNeon(const float* src, int64_t src_stride, int rows, int cols,
                   const float* thresholds, float* dst, int64_t dst_stride) {
  const int rows4 = rows & ~3, cols4 = cols & ~3;
  for (int p = 0; p < rows4; p += 4) {
    for (int c = 0; c < cols4; c += 4) {
      float32x4_t r[4];
      for (int i = 0; i < 4; ++i) r[i] = vld1q_f32(src + (p + i) * src_stride + c);
      if (thresholds != nullptr) {
        const float32x4_t t = vld1q_f32(thresholds + c);
        for (int i = 0; i < 4; ++i)
          r[i] = vreinterpretq_f32_u32(
              vandq_u32(vreinterpretq_u32_f32(r[i]), vcgeq_f32(vabsq_f32(r[i]), t)));
      }
      const float32x4x2_t a = vtrnq_f32(r[0], r[1]), b = vtrnq_f32(r[2], r[3]);
      vst1q_f32(dst + c * dst_stride + p,
                vcombine_f32(vget_low_f32(a.val[0]), vget_low_f32(b.val[0])));
      vst1q_f32(dst + (c + 1) * dst_stride + p,
                vcombine_f32(vget_low_f32(a.val[1]), vget_low_f32(b.val[1])));
      vst1q_f32(dst + (c + 2) * dst_stride + p,
                vcombine_f32(vget_high_f32(a.val[0]), vget_high_f32(b.val[0])));
      vst1q_f32(dst + (c + 3) * dst_stride + p,
                vcombine_f32(vget_high_f32(a.val[1]), vget_high_f32(b.val[1])));
    }
    if (cols4 < cols)
      TransposeReference(src + p * src_stride + cols4, src_stride, 4, cols - cols4,
                         thresholds != nullptr ? thresholds + cols4 : nullptr,
                         dst + cols4 * dst_stride + p, dst_stride);
  }
  if (rows4 < rows)
    TransposeReference(src + rows4 * src_stride, src_stride, rows - rows4, cols, thresholds,
                       dst + rows4, dst_stride);
}

void SpmmNeon(const SpmmFilter& f, const float* x, float* y) {
  spmm_internal::SpmmFixedWidth<Neon>(f, x, y);
}

}  // namespace hybrid_sparse
