// Portable reference kernel for HybridSparseConv2D. Correctness first: every optimised
// variant is tested against this one, and it is the fallback on any CPU.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "tflite_ops/kernels/sparse_conv.h"

namespace hybrid_sparse {

bool ComputeConvShape(Padding padding, ConvShape* s) {
  const int eff_kh = (s->kernel_h - 1) * s->dilation_h + 1;
  const int eff_kw = (s->kernel_w - 1) * s->dilation_w + 1;
  if (padding == Padding::kSame) {
    s->out_h = (s->in_h + s->stride_h - 1) / s->stride_h;
    s->out_w = (s->in_w + s->stride_w - 1) / s->stride_w;
    const int pad_h = std::max((s->out_h - 1) * s->stride_h + eff_kh - s->in_h, 0);
    const int pad_w = std::max((s->out_w - 1) * s->stride_w + eff_kw - s->in_w, 0);
    s->pad_top = pad_h / 2;
    s->pad_left = pad_w / 2;
  } else {
    s->out_h = s->in_h >= eff_kh ? (s->in_h - eff_kh) / s->stride_h + 1 : 0;
    s->out_w = s->in_w >= eff_kw ? (s->in_w - eff_kw) / s->stride_w + 1 : 0;
    s->pad_top = 0;
    s->pad_left = 0;
  }
  return s->out_h > 0 && s->out_w > 0;
}

namespace {

// The index checks both filter families share (they differ in what a column and a value are).
template <typename Filter>
std::string ValidateIndex(const Filter& f) {
  if (f.out_c <= 0) return "out_channels must be positive";
  if (f.num_cols <= 0) return "filter has no columns";
  if (f.block_size <= 0) return "block_size must be positive";
  if (f.num_blocks != (f.out_c + f.block_size - 1) / f.block_size)
    return "num_blocks does not equal ceil(out_channels / block_size)";
  if (f.num_blocks > 32768) return "too many output-channel blocks for int16 block indices";
  if (f.num_nonzero_blocks < 0) return "negative number of nonzero blocks";
  if (f.col_ptr == nullptr || f.row_block == nullptr || f.values == nullptr)
    return "missing filter array";
  if (f.col_ptr[0] != 0) return "col_ptr[0] must be 0";
  for (int k = 0; k < f.num_cols; ++k) {
    const int32_t begin = f.col_ptr[k], end = f.col_ptr[k + 1];
    if (end < begin) return "col_ptr is not non-decreasing at column " + std::to_string(k);
    if (end > f.num_nonzero_blocks)
      return "col_ptr exceeds the number of nonzero blocks at column " + std::to_string(k);
    for (int32_t j = begin; j < end; ++j) {
      const int b = f.row_block[j];
      if (b < 0 || b >= f.num_blocks)
        return "row_block[" + std::to_string(j) + "] = " + std::to_string(b) + " is out of range";
      if (j > begin && b <= f.row_block[j - 1])
        return "row_block is not strictly increasing within column " + std::to_string(k);
    }
  }
  if (f.col_ptr[f.num_cols] != f.num_nonzero_blocks)
    return "col_ptr[num_cols] does not equal the number of nonzero blocks";
  return "";
}

}  // namespace

std::string ValidateSparseFilter(const SparseFilter& f) { return ValidateIndex(f); }

std::string ValidateSparseFilter(const Qs8SparseFilter& f) { return ValidateIndex(f); }

void TransposeReference(const float* src, int64_t src_stride, int rows, int cols,
                        const float* thresholds, float* dst, int64_t dst_stride) {
  for (int p = 0; p < rows; ++p) {
    const float* row = src + p * src_stride;
    for (int c = 0; c < cols; ++c) {
      const float v = row[c];
      dst[c * dst_stride + p] = thresholds != nullptr && std::fabs(v) < thresholds[c] ? 0.0f : v;
    }
  }
}

void SparseConvRowsReference(const ConvArgs& a, int row_begin, int row_end) {
  const ConvShape& s = *a.shape;
  const SparseFilter& f = *a.filter;
  const int bs = f.block_size;
  float* acc = a.scratch;
  for (int row = row_begin; row < row_end; ++row) {
    const int n = row / s.out_h;
    const int oy = row % s.out_h;
    const float* in_image = a.input + static_cast<size_t>(n) * s.in_h * s.in_w * s.in_c;
    for (int ox = 0; ox < s.out_w; ++ox) {
      if (a.bias != nullptr) {
        std::memcpy(acc, a.bias, sizeof(float) * s.out_c);
      } else {
        std::memset(acc, 0, sizeof(float) * s.out_c);
      }
      std::memset(acc + s.out_c, 0, sizeof(float) * (f.num_blocks * bs - s.out_c));
      for (int ky = 0; ky < s.kernel_h; ++ky) {
        const int iy = oy * s.stride_h - s.pad_top + ky * s.dilation_h;
        if (iy < 0 || iy >= s.in_h) continue;  // zero padding contributes nothing
        for (int kx = 0; kx < s.kernel_w; ++kx) {
          const int ix = ox * s.stride_w - s.pad_left + kx * s.dilation_w;
          if (ix < 0 || ix >= s.in_w) continue;
          const float* px = in_image + (static_cast<size_t>(iy) * s.in_w + ix) * s.in_c;
          const int col0 = (ky * s.kernel_w + kx) * s.in_c;
          for (int ic = 0; ic < s.in_c; ++ic) {
            const float x = px[ic];
            if (x == 0.0f) continue;
            if (a.thresholds != nullptr && std::fabs(x) < a.thresholds[ic]) continue;
            const int col = col0 + ic;
            for (int32_t j = f.col_ptr[col]; j < f.col_ptr[col + 1]; ++j) {
              float* dst = acc + f.row_block[j] * bs;
              const float* w = f.values + static_cast<size_t>(j) * bs;
              for (int r = 0; r < bs; ++r) dst[r] += x * w[r];
            }
          }
        }
      }
      float* out = a.output + ((static_cast<size_t>(n) * s.out_h + oy) * s.out_w + ox) * s.out_c;
      for (int c = 0; c < s.out_c; ++c) out[c] = ApplyActivation(acc[c], a.activation);
    }
  }
}

}  // namespace hybrid_sparse
