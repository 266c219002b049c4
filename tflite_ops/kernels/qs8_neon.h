// What the two NEON qs8 microkernels (qs8_neon.cc, qs8_neondot.cc) share: TFLite's
// requantization of 4 int32 lanes, the store of 8 int8 results (internal linkage, so that
// the dotprod file's copy, built with its own -march, never stands in for the baseline one)
// and the byte transpose (defined once, in the baseline file).
#ifndef TFLITE_OPS_KERNELS_QS8_NEON_H_
#define TFLITE_OPS_KERNELS_QS8_NEON_H_

#include <arm_neon.h>

#include "tflite_ops/kernels/sparse_conv.h"

namespace hybrid_sparse {
namespace {

// Single rounding: one 64-bit product and a rounding shift right (srshl by a negative count
// rounds half up, as TFLite's + 2^(n-1) >> n). Double rounding: sqrdmulh is TFLite's
// saturating rounding doubling high multiply, and the rounding divide by 2^r rounds half away
// from zero: srshl after subtracting 1 from negative values (saturating).
inline int32x4_t Qs8Requantize(int32x4_t acc, int32_t multiplier, int32_t shift,
                               Rounding rounding) {
  if (rounding == Rounding::kSingle) {
    const int64x2_t count = vdupq_n_s64(-(31 - shift));
    const int32x4_t m = vdupq_n_s32(multiplier);
    const int64x2_t lo = vrshlq_s64(vmull_s32(vget_low_s32(acc), vget_low_s32(m)), count);
    const int64x2_t hi = vrshlq_s64(vmull_high_s32(acc, m), count);
    return vcombine_s32(vmovn_s64(lo), vmovn_s64(hi));
  }
  const int left = shift > 0 ? shift : 0, right = shift > 0 ? 0 : -shift;
  const int32x4_t high =
      vqrdmulhq_s32(vshlq_s32(acc, vdupq_n_s32(left)), vdupq_n_s32(multiplier));
  if (right == 0) return high;
  return vrshlq_s32(vqaddq_s32(high, vshrq_n_s32(high, 31)), vdupq_n_s32(-right));
}

// Positions [0, 8) of a tile of channel c: requantized, offset, clamped, narrowed to int8.
inline void Qs8Store8(int32x4_t a, int32x4_t b, int c, const Qs8Requantization& q, int8_t* y) {
  const int32x4_t zero_point = vdupq_n_s32(q.output_zero_point);
  const int32x4_t lo = vdupq_n_s32(q.min), hi = vdupq_n_s32(q.max);
  auto finish = [&](int32x4_t v) {
    v = vaddq_s32(Qs8Requantize(v, q.multiplier[c], q.shift[c], q.rounding), zero_point);
    return vmovn_s32(vminq_s32(vmaxq_s32(v, lo), hi));
  };
  vst1_s8(y, vmovn_s16(vcombine_s16(finish(a), finish(b))));
}

}  // namespace

void Qs8TransposeNeon(const int8_t* src, int src_stride, int rows, int cols, int8_t* dst,
                      int64_t dst_stride);

}  // namespace hybrid_sparse

#endif  // TFLITE_OPS_KERNELS_QS8_NEON_H_
