// x86-64 AVX2+FMA variant. Eight consecutive output pixels of one output row share every
// weight load: lane i of each vector is pixel ox0 + i. For each filter tap the eight inputs
// of an input channel come in with one masked gather (lanes outside the image read nothing
// and stay zero, which is exactly zero padding); when all eight are zero or below threshold
// the whole weight column is skipped, otherwise each nonzero weight is one broadcast FMA
// into an accumulator laid out [channel][8 pixels].
#include <immintrin.h>

#include <algorithm>

#include "tflite_ops/kernels/sparse_conv.h"

namespace hybrid_sparse {

void SparseConvRowsAvx2(const ConvArgs& a, int row_begin, int row_end) {
  const ConvShape& s = *a.shape;
  const SparseFilter& f = *a.filter;
  const int bs = f.block_size;
  const int padded_c = f.num_blocks * bs;
  float* acc = a.scratch;  // [padded_c][8]
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256 zero = _mm256_setzero_ps();
  for (int row = row_begin; row < row_end; ++row) {
    const int n = row / s.out_h;
    const int oy = row % s.out_h;
    const float* in_image = a.input + static_cast<size_t>(n) * s.in_h * s.in_w * s.in_c;
    for (int ox0 = 0; ox0 < s.out_w; ox0 += 8) {
      const int count = std::min(8, s.out_w - ox0);
      for (int c = 0; c < padded_c; ++c) {
        const float b = (a.bias != nullptr && c < s.out_c) ? a.bias[c] : 0.0f;
        _mm256_storeu_ps(acc + c * 8, _mm256_set1_ps(b));
      }
      const __m256i in_lanes = _mm256_cmpgt_epi32(_mm256_set1_epi32(count), lane);
      const __m256i ox = _mm256_add_epi32(_mm256_set1_epi32(ox0), lane);
      const __m256i ix_base = _mm256_mullo_epi32(ox, _mm256_set1_epi32(s.stride_w));
      for (int ky = 0; ky < s.kernel_h; ++ky) {
        const int iy = oy * s.stride_h - s.pad_top + ky * s.dilation_h;
        if (iy < 0 || iy >= s.in_h) continue;
        const float* in_row = in_image + static_cast<size_t>(iy) * s.in_w * s.in_c;
        for (int kx = 0; kx < s.kernel_w; ++kx) {
          const __m256i ix =
              _mm256_add_epi32(ix_base, _mm256_set1_epi32(kx * s.dilation_w - s.pad_left));
          const __m256i inside = _mm256_and_si256(
              _mm256_and_si256(_mm256_cmpgt_epi32(ix, _mm256_set1_epi32(-1)),
                               _mm256_cmpgt_epi32(_mm256_set1_epi32(s.in_w), ix)),
              in_lanes);
          if (_mm256_movemask_epi8(inside) == 0) continue;
          const __m256 mask = _mm256_castsi256_ps(inside);
          const __m256i offset = _mm256_mullo_epi32(ix, _mm256_set1_epi32(s.in_c));
          const int col0 = (ky * s.kernel_w + kx) * s.in_c;
          for (int ic = 0; ic < s.in_c; ++ic) {
            __m256 x = _mm256_mask_i32gather_ps(zero, in_row + ic, offset, mask, 4);
            if (a.thresholds != nullptr) {
              const __m256 keep = _mm256_cmp_ps(_mm256_andnot_ps(sign, x),
                                                _mm256_set1_ps(a.thresholds[ic]), _CMP_GE_OQ);
              x = _mm256_and_ps(x, keep);
            }
            if (_mm256_movemask_ps(_mm256_cmp_ps(x, zero, _CMP_NEQ_UQ)) == 0) continue;
            const int col = col0 + ic;
            for (int32_t j = f.col_ptr[col]; j < f.col_ptr[col + 1]; ++j) {
              float* dst = acc + static_cast<size_t>(f.row_block[j]) * bs * 8;
              const float* w = f.values + static_cast<size_t>(j) * bs;
              for (int r = 0; r < bs; ++r) {
                float* d = dst + r * 8;
                _mm256_storeu_ps(d, _mm256_fmadd_ps(_mm256_broadcast_ss(w + r), x,
                                                    _mm256_loadu_ps(d)));
              }
            }
          }
        }
      }
      float* out = a.output + ((static_cast<size_t>(n) * s.out_h + oy) * s.out_w + ox0) * s.out_c;
      for (int i = 0; i < count; ++i) {
        for (int c = 0; c < s.out_c; ++c) {
          out[static_cast<size_t>(i) * s.out_c + c] = ApplyActivation(acc[c * 8 + i], a.activation);
        }
      }
    }
  }
}

}  // namespace hybrid_sparse
