// RISC-V V 1.0 microkernel and transpose, vector-length agnostic: a tile is one LMUL=4
// register group of floats (16 positions at VLEN=128, 64 at VLEN=512), up to 4 channels per
// pass (4 accumulator groups + 1 input group of the 8). vfmacc.vf takes the weight as a scalar,
// so no broadcast. Vector types are sizeless (no arrays), hence explicit accumulators instead
// of spmm_fixed_width.h.
#include <riscv_vector.h>

#include "tflite_ops/kernels/geometry.h"
#include "tflite_ops/kernels/sparse_conv.h"

namespace hybrid_sparse {
namespace {

// The m4 types and BlockRows<1..4> below are that geometry.
static_assert(geometry::kRvvLmul == 4 && geometry::kRvvMaxRows == 4, "rvv geometry");

template <int kRows>
void BlockRows(const SpmmFilter& f, const float* x, int b, int r0, float* y, size_t vl) {
  const int bs = f.block_size;
  const int c0 = b * bs + r0;
  auto start = [&](int r) {
    return f.accumulate ? __riscv_vle32_v_f32m4(y + static_cast<int64_t>(c0 + r) * vl, vl)
                        : __riscv_vfmv_v_f_f32m4(f.bias[c0 + r], vl);
  };
  vfloat32m4_t a0 = start(0);
  vfloat32m4_t a1 = kRows > 1 ? start(1) : a0;
  vfloat32m4_t a2 = kRows > 2 ? start(2) : a0;
  vfloat32m4_t a3 = kRows > 3 ? start(3) : a0;
  const float* w = f.values + r0;
  for (int32_t j = f.block_begin[b]; j < f.block_end[b]; ++j) {
    const vfloat32m4_t in = __riscv_vle32_v_f32m4(x + f.offset[j], vl);
    const float* wj = w + static_cast<int64_t>(j) * bs;
    a0 = __riscv_vfmacc_vf_f32m4(a0, wj[0], in, vl);
    if (kRows > 1) a1 = __riscv_vfmacc_vf_f32m4(a1, wj[1], in, vl);
    if (kRows > 2) a2 = __riscv_vfmacc_vf_f32m4(a2, wj[2], in, vl);
    if (kRows > 3) a3 = __riscv_vfmacc_vf_f32m4(a3, wj[3], in, vl);
  }
  auto store = [&](vfloat32m4_t v, int r) {
    v = __riscv_vfmin_vf_f32m4(__riscv_vfmax_vf_f32m4(v, f.min, vl), f.max, vl);
    __riscv_vse32_v_f32m4(y + static_cast<int64_t>(c0 + r) * vl, v, vl);
  };
  store(a0, 0);
  if (kRows > 1) store(a1, 1);
  if (kRows > 2) store(a2, 2);
  if (kRows > 3) store(a3, 3);
}

}  // namespace

// One strided load gathers a column of src (one input channel over consecutive pixels),
// stored as a contiguous row of dst.
void TransposeRvv(const float* src, int64_t src_stride, int rows, int cols,
                  const float* thresholds, float* dst, int64_t dst_stride) {
  const ptrdiff_t stride_bytes = static_cast<ptrdiff_t>(src_stride * sizeof(float));
  for (int c = 0; c < cols; ++c) {
    float* out = dst + c * dst_stride;
    for (int p = 0; p < rows;) {
      const size_t vl = __riscv_vsetvl_e32m4(rows - p);
      vfloat32m4_t v = __riscv_vlse32_v_f32m4(src + p * src_stride + c, stride_bytes, vl);
      if (thresholds != nullptr) {
        const vbool8_t small = __riscv_vmflt_vf_f32m4_b8(__riscv_vfabs_v_f32m4(v, vl),
                                                         thresholds[c], vl);
        v = __riscv_vfmerge_vfm_f32m4(v, 0.0f, small, vl);
      }
      __riscv_vse32_v_f32m4(out + p, v, vl);
      p += static_cast<int>(vl);
    }
  }
}

int RvvTile() { return static_cast<int>(__riscv_vsetvlmax_e32m4()); }

void SpmmRvv(const SpmmFilter& f, const float* x, float* y) {
  const size_t vl = __riscv_vsetvlmax_e32m4();
  const int bs = f.block_size;
  for (int b = 0; b < f.num_blocks; ++b) {
    int r0 = 0;
    for (; r0 + 4 <= bs; r0 += 4) BlockRows<4>(f, x, b, r0, y, vl);
    if (r0 + 2 <= bs) {
      BlockRows<2>(f, x, b, r0, y, vl);
      r0 += 2;
    }
    if (r0 < bs) BlockRows<1>(f, x, b, r0, y, vl);
  }
}

}  // namespace hybrid_sparse
