// qs8 microkernel for ARMv8.0 NEON (no dot product): a q register holds 4 positions' words of
// 4 int8 inputs; smull/smull2 multiply them bytewise by the broadcast weight word (int8 x int8
// fits int16) and sadalp folds adjacent products into int32 pairs, so two accumulators hold a
// group of 4 positions as channel pairs (0+1, 2+3) until addp joins them at the end.
#include <arm_neon.h>

#include "tflite_ops/kernels/geometry.h"
#include "tflite_ops/kernels/qs8_neon.h"
#include "tflite_ops/kernels/qs8_transpose_bytes.h"
#include "tflite_ops/kernels/sparse_conv.h"

namespace hybrid_sparse {
namespace {

// kGroups groups of 4 positions (2 accumulators each): a tile of 4 * kGroups.
template <int kGroups>
void Qs8SpmmNeon(const Qs8SpmmFilter& f, const uint32_t* x, int8_t* y) {
  constexpr int kTile = 4 * kGroups;
  const Qs8Requantization& q = *f.requantization;
  for (int c = 0; c < f.num_channels; ++c) {
    if (f.row_begin[c] == f.row_end[c]) continue;  // a constant the plan wrote
    int32x4_t lo[kGroups], hi[kGroups];
    for (int g = 0; g < kGroups; ++g) lo[g] = hi[g] = vdupq_n_s32(0);
    for (int32_t j = f.row_begin[c]; j < f.row_end[c]; ++j) {
      const int8x16_t w = vreinterpretq_s8_s32(vdupq_n_s32(f.values[j]));
      const int8x8_t w_low = vget_low_s8(w);
      const int8_t* p = reinterpret_cast<const int8_t*>(x + f.offset[j]);
      for (int g = 0; g < kGroups; ++g) {
        const int8x16_t in = vld1q_s8(p + 16 * g);
        lo[g] = vpadalq_s16(lo[g], vmull_s8(vget_low_s8(in), w_low));
        hi[g] = vpadalq_s16(hi[g], vmull_high_s8(in, w));
      }
    }
    const int32x4_t bias = vdupq_n_s32(f.bias[c]);
    for (int g = 0; g < kGroups; g += 2)
      Qs8Store8(vaddq_s32(vpaddq_s32(lo[g], hi[g]), bias),
                vaddq_s32(vpaddq_s32(lo[g + 1], hi[g + 1]), bias), c, q, y + c * kTile + 4 * g);
  }
}

// The byte transpose's vectors (qs8_transpose_bytes.h): zip1/zip2 are x86's unpacks.
struct NeonBytes {
  using T = int8x16_t;
  static T Load(const int8_t* p) { return vld1q_s8(p); }
  static void Store(int8_t* p, T v) { vst1q_s8(p, v); }
  static T Zero() { return vdupq_n_s8(0); }
  template <int kBits, bool kHigh>
  static T Zip(T a, T b) {
    if (kBits == 8) return kHigh ? vzip2q_s8(a, b) : vzip1q_s8(a, b);
    if (kBits == 16) {
      const int16x8_t x = vreinterpretq_s16_s8(a), y = vreinterpretq_s16_s8(b);
      return vreinterpretq_s8_s16(kHigh ? vzip2q_s16(x, y) : vzip1q_s16(x, y));
    }
    if (kBits == 32) {
      const int32x4_t x = vreinterpretq_s32_s8(a), y = vreinterpretq_s32_s8(b);
      return vreinterpretq_s8_s32(kHigh ? vzip2q_s32(x, y) : vzip1q_s32(x, y));
    }
    const int64x2_t x = vreinterpretq_s64_s8(a), y = vreinterpretq_s64_s8(b);
    return vreinterpretq_s8_s64(kHigh ? vzip2q_s64(x, y) : vzip1q_s64(x, y));
  }
};

}  // namespace

void Qs8TransposeNeon(const int8_t* src, int src_stride, int rows, int cols, int8_t* dst,
                      int64_t dst_stride) {
  Qs8TransposeBytes16<NeonBytes>(src, src_stride, rows, cols, dst, dst_stride);
}

static constexpr const geometry::Qs8& kG = geometry::kQs8Neon;
static_assert(kG.lanes == 4, "q register lanes");
const Qs8Kernels kQs8Neon = {
    kG.name,
    {{kG.tiles[0], Qs8SpmmNeon<kG.tiles[0] / kG.lanes>},
     {kG.tiles[1], Qs8SpmmNeon<kG.tiles[1] / kG.lanes>}},
    kG.lanes,
    false,
    Qs8TransposeNeon,
};

}  // namespace hybrid_sparse
