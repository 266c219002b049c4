// qs8 microkernel for RISC-V V 1.0, vector-length agnostic: a tile is one LMUL=4 group of
// 32-bit lanes (positions), as the float kernel's. RVV has no 4-way byte dot product, so each
// input word is sign-extended byte by byte in place (shifts) and multiplied by the weight's
// byte as a scalar (vmacc.vx): no broadcast, no widening of the packed input. Requantization
// widens to 64 bits (vwmul) and narrows back with one arithmetic shift (vnsra), which is
// TFLite's in both roundings.
#include <riscv_vector.h>

#include "tflite_ops/kernels/geometry.h"
#include "tflite_ops/kernels/sparse_conv.h"

namespace hybrid_sparse {
namespace {

static_assert(geometry::kRvvLmul == 4, "the m4 types below are that geometry");

inline vint32m4_t Requantize(vint32m4_t acc, int32_t multiplier, int32_t shift,
                             Rounding rounding, size_t vl) {
  if (rounding == Rounding::kSingle) {
    const int total = 31 - shift;
    const vint64m8_t p = __riscv_vadd_vx_i64m8(__riscv_vwmul_vx_i64m8(acc, multiplier, vl),
                                               int64_t{1} << (total - 1), vl);
    return __riscv_vnsra_wx_i32m4(p, total, vl);
  }
  if (shift > 0) acc = __riscv_vsll_vx_i32m4(acc, shift, vl);
  const vint64m8_t p = __riscv_vadd_vx_i64m8(__riscv_vwmul_vx_i64m8(acc, multiplier, vl),
                                             int64_t{1} << 30, vl);
  const vint32m4_t high = __riscv_vnsra_wx_i32m4(p, 31, vl);
  const int right = shift > 0 ? 0 : -shift;
  if (right == 0) return high;
  // (high + 2^(right-1) - (high < 0)) >> right, in 64 bits so that nothing wraps.
  const vint64m8_t rounded = __riscv_vwadd_wv_i64m8(
      __riscv_vwadd_vx_i64m8(high, 1 << (right - 1), vl), __riscv_vsra_vx_i32m4(high, 31, vl),
      vl);
  return __riscv_vnsra_wx_i32m4(rounded, right, vl);
}

void Qs8SpmmRvv(const Qs8SpmmFilter& f, const uint32_t* x, int8_t* y) {
  const size_t vl = __riscv_vsetvlmax_e32m4();
  const Qs8Requantization& q = *f.requantization;
  for (int c = 0; c < f.num_channels; ++c) {
    if (f.row_begin[c] == f.row_end[c]) continue;  // a constant the plan wrote
    vint32m4_t acc = __riscv_vmv_v_x_i32m4(f.bias[c], vl);
    for (int32_t j = f.row_begin[c]; j < f.row_end[c]; ++j) {
      const vint32m4_t in = __riscv_vle32_v_i32m4(
          reinterpret_cast<const int32_t*>(x + f.offset[j]), vl);
      const int32_t w = f.values[j];
      // Byte k of every lane, sign-extended: shift it to the top, then arithmetic back.
      acc = __riscv_vmacc_vx_i32m4(acc, static_cast<int8_t>(w),
                                   __riscv_vsra_vx_i32m4(__riscv_vsll_vx_i32m4(in, 24, vl), 24, vl),
                                   vl);
      acc = __riscv_vmacc_vx_i32m4(acc, static_cast<int8_t>(w >> 8),
                                   __riscv_vsra_vx_i32m4(__riscv_vsll_vx_i32m4(in, 16, vl), 24, vl),
                                   vl);
      acc = __riscv_vmacc_vx_i32m4(acc, static_cast<int8_t>(w >> 16),
                                   __riscv_vsra_vx_i32m4(__riscv_vsll_vx_i32m4(in, 8, vl), 24, vl),
                                   vl);
      acc = __riscv_vmacc_vx_i32m4(acc, static_cast<int8_t>(w >> 24),
                                   __riscv_vsra_vx_i32m4(in, 24, vl), vl);
    }
    vint32m4_t r = __riscv_vadd_vx_i32m4(
        Requantize(acc, q.multiplier[c], q.shift[c], q.rounding, vl), q.output_zero_point, vl);
    r = __riscv_vmin_vx_i32m4(__riscv_vmax_vx_i32m4(r, q.min, vl), q.max, vl);
    const vint8m1_t bytes = __riscv_vnsra_wx_i8m1(__riscv_vnsra_wx_i16m2(r, 0, vl), 0, vl);
    __riscv_vse8_v_i8m1(y + c * static_cast<int64_t>(vl), bytes, vl);
  }
}

// A channel's row of results, stored with a stride into its NHWC column.
void Qs8TransposeRvv(const int8_t* src, int src_stride, int rows, int cols, int8_t* dst,
                     int64_t dst_stride) {
  for (int c = 0; c < rows; ++c) {
    for (int p = 0; p < cols;) {
      const size_t vl = __riscv_vsetvl_e8m4(cols - p);
      __riscv_vsse8_v_i8m4(dst + p * dst_stride + c, static_cast<ptrdiff_t>(dst_stride),
                           __riscv_vle8_v_i8m4(src + c * src_stride + p, vl), vl);
      p += static_cast<int>(vl);
    }
  }
}

}  // namespace

const Qs8Kernels& Qs8RvvKernels() {
  static const Qs8Kernels kernels = {
      "rvv",
      {{static_cast<int>(__riscv_vsetvlmax_e32m4()), Qs8SpmmRvv}},
      static_cast<int>(__riscv_vsetvlmax_e32m1()),
      false,
      Qs8TransposeRvv,
  };
  return kernels;
}

}  // namespace hybrid_sparse
