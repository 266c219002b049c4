// The qs8 microkernel for packed SIMD in general registers (RISC-V P): a 64-bit register holds
// two positions' words of 4 int8 inputs, and one packed dot-product-accumulate (P's pm4adda.b:
// each 32-bit half += the 4 byte products of that half) takes a nonzero for two positions. The
// instruction is a template argument: qs8_rvp.cc passes P's, qs8_packed_twin.cc a portable C
// emulation, so that everything but the one instruction runs in the tests on any CPU.
#ifndef TFLITE_OPS_KERNELS_QS8_SPMM_PACKED_H_
#define TFLITE_OPS_KERNELS_QS8_SPMM_PACKED_H_

#include <cstdint>
#include <cstring>

#include "tflite_ops/kernels/geometry.h"
#include "tflite_ops/kernels/sparse_conv.h"

namespace hybrid_sparse {
namespace {  // each including file instantiates its own

using PackedDot4Fn = uint64_t (*)(uint64_t acc, uint64_t x, uint64_t w);

// kRegs accumulator registers of 2 positions: a tile of 2 * kRegs.
template <PackedDot4Fn kDot4, int kRegs>
void Qs8SpmmPacked(const Qs8SpmmFilter& f, const uint32_t* x, int8_t* y) {
  constexpr int kTile = 2 * kRegs;
  constexpr uint64_t kBothHalves = 0x0000000100000001ull;
  const Qs8Requantization& q = *f.requantization;
  for (int c = 0; c < f.num_channels; ++c) {
    if (f.row_begin[c] == f.row_end[c]) continue;  // a constant the plan wrote
    uint64_t acc[kRegs];
    for (int r = 0; r < kRegs; ++r) acc[r] = static_cast<uint32_t>(f.bias[c]) * kBothHalves;
    for (int32_t j = f.row_begin[c]; j < f.row_end[c]; ++j) {
      const uint64_t w = static_cast<uint32_t>(f.values[j]) * kBothHalves;
      const uint32_t* p = x + f.offset[j];
      for (int r = 0; r < kRegs; ++r) {
        uint64_t in;
        std::memcpy(&in, p + 2 * r, sizeof(in));  // little-endian: position 2r in the low half
        acc[r] = kDot4(acc[r], in, w);
      }
    }
    int8_t* out = y + c * kTile;
    for (int r = 0; r < kRegs; ++r) {
      out[2 * r] = Requantize(static_cast<int32_t>(static_cast<uint32_t>(acc[r])), c, q);
      out[2 * r + 1] = Requantize(static_cast<int32_t>(static_cast<uint32_t>(acc[r] >> 32)), c, q);
    }
  }
}

// The family of one packed dot product: its kernels at the P kernel's tiles.
template <PackedDot4Fn kDot4>
constexpr Qs8Kernels PackedFamily(const char* name) {
  constexpr const geometry::Qs8& g = geometry::kQs8RiscvP;
  static_assert(g.tiles[2] == 0, "two tiles");
  return {name,
          {{g.tiles[0], Qs8SpmmPacked<kDot4, g.tiles[0] / g.lanes>},
           {g.tiles[1], Qs8SpmmPacked<kDot4, g.tiles[1] / g.lanes>}},
          g.lanes,
          false,
          nullptr};
}

}  // namespace
}  // namespace hybrid_sparse

#endif  // TFLITE_OPS_KERNELS_QS8_SPMM_PACKED_H_
