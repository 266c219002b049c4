// qs8 microkernel for NEON with the ARMv8.2 dot product (FEAT_DotProd; dispatch.cc checks
// HWCAP_ASIMDDP): sdot sums, per 32-bit lane, the 4 products of a word of 4 int8 inputs and the
// broadcast weight word, so one nonzero is one sdot per 4 positions.
#include <arm_neon.h>

#include "tflite_ops/kernels/geometry.h"
#include "tflite_ops/kernels/qs8_neon.h"
#include "tflite_ops/kernels/sparse_conv.h"

namespace hybrid_sparse {
namespace {

// kVectors accumulators of 4 positions: a tile of 4 * kVectors (16 of the 32 registers at most).
template <int kVectors>
void Qs8SpmmNeonDot(const Qs8SpmmFilter& f, const uint32_t* x, int8_t* y) {
  constexpr int kTile = 4 * kVectors;
  const Qs8Requantization& q = *f.requantization;
  for (int c = 0; c < f.num_channels; ++c) {
    if (f.row_begin[c] == f.row_end[c]) continue;  // a constant the plan wrote
    int32x4_t acc[kVectors];
    for (int v = 0; v < kVectors; ++v) acc[v] = vdupq_n_s32(f.bias[c]);
    for (int32_t j = f.row_begin[c]; j < f.row_end[c]; ++j) {
      const int8x16_t w = vreinterpretq_s8_s32(vdupq_n_s32(f.values[j]));
      const int8_t* p = reinterpret_cast<const int8_t*>(x + f.offset[j]);
      for (int v = 0; v < kVectors; ++v) acc[v] = vdotq_s32(acc[v], vld1q_s8(p + 16 * v), w);
    }
    for (int v = 0; v < kVectors; v += 2)
      Qs8Store8(acc[v], acc[v + 1], c, q, y + c * kTile + 4 * v);
  }
}

// Blocks of 4 channels sharing a pattern: a nonzero's 4 weight words are one q register and
// each input load feeds 4 sdot by element, so a block costs one load per 4 dot products
// where the row kernel pays one per dot product (and a weight broadcast).
template <int kVectors>
void Qs8SpmmNeonDotBlock(const Qs8SpmmFilter& f, const uint32_t* x, int8_t* y) {
  constexpr int kTile = 4 * kVectors;
  constexpr int kRows = geometry::kQs8BlockRows;
  static_assert(kRows == 4, "one q register of weight words per nonzero");
  static_assert(kVectors % 2 == 0, "results are stored 8 at a time");
  const Qs8Requantization& q = *f.requantization;
  for (int b = 0; b < f.num_channels / kRows; ++b) {
    if (f.row_begin[b] == f.row_end[b]) continue;  // constants the plan wrote
    int32x4_t acc[kRows][kVectors];
    for (int r = 0; r < kRows; ++r)
      for (int v = 0; v < kVectors; ++v) acc[r][v] = vdupq_n_s32(f.bias[b * kRows + r]);
    for (int32_t j = f.row_begin[b]; j < f.row_end[b]; ++j) {
      const int8x16_t w = vld1q_s8(reinterpret_cast<const int8_t*>(f.values + j * kRows));
      const int8_t* p = reinterpret_cast<const int8_t*>(x + f.offset[j]);
      for (int v = 0; v < kVectors; ++v) {
        const int8x16_t in = vld1q_s8(p + 16 * v);
        acc[0][v] = vdotq_laneq_s32(acc[0][v], in, w, 0);
        acc[1][v] = vdotq_laneq_s32(acc[1][v], in, w, 1);
        acc[2][v] = vdotq_laneq_s32(acc[2][v], in, w, 2);
        acc[3][v] = vdotq_laneq_s32(acc[3][v], in, w, 3);
      }
    }
    for (int r = 0; r < kRows; ++r) {
      const int c = b * kRows + r;
      for (int v = 0; v < kVectors; v += 2)
        Qs8Store8(acc[r][v], acc[r][v + 1], c, q, y + c * kTile + 4 * v);
    }
  }
}

}  // namespace

static constexpr const geometry::Qs8& kG = geometry::kQs8NeonDot;
static_assert(kG.lanes == 4, "q register lanes");
const Qs8Kernels kQs8NeonDot = {
    kG.name,
    {{kG.tiles[0], Qs8SpmmNeonDot<kG.tiles[0] / kG.lanes>},
     {kG.tiles[1], Qs8SpmmNeonDot<kG.tiles[1] / kG.lanes>},
     {kG.tiles[2], Qs8SpmmNeonDot<kG.tiles[2] / kG.lanes>},
     {kG.tiles[3], Qs8SpmmNeonDot<kG.tiles[3] / kG.lanes>}},
    kG.lanes,
    false,
    Qs8TransposeNeon,
    {{kG.block_tiles[0], Qs8SpmmNeonDotBlock<kG.block_tiles[0] / kG.lanes>},
     {kG.block_tiles[1], Qs8SpmmNeonDotBlock<kG.block_tiles[1] / kG.lanes>},
     {kG.block_tiles[2], Qs8SpmmNeonDotBlock<kG.block_tiles[2] / kG.lanes>}},
};
static_assert(kG.block_tiles[3] == 0, "three block tiles");

}  // namespace hybrid_sparse
