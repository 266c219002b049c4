// The RISC-V P kernel's twin (qs8_spmm_packed.h with pm4adda.b written in C): what the tests
// run of the P kernel on CPUs and emulators without P (no simulator of the 0.21 draft is
// packaged; see README).
#include <cstdint>

#include "tflite_ops/kernels/qs8_spmm_packed.h"
#include "tflite_ops/kernels/sparse_conv.h"

namespace hybrid_sparse {
namespace {

// pm4adda.b on RV64, as the P draft defines it: each 32-bit half of acc, modulo 2^32, plus the
// sum of the 4 products of that half's signed bytes of x and w.
uint64_t Pm4AddaB(uint64_t acc, uint64_t x, uint64_t w) {
  uint64_t out = 0;
  for (int half = 0; half < 2; ++half) {
    uint32_t sum = static_cast<uint32_t>(acc >> (32 * half));
    for (int k = 0; k < 4; ++k) {
      const int shift = 32 * half + 8 * k;
      sum += static_cast<uint32_t>(static_cast<int8_t>(x >> shift) *
                                   static_cast<int8_t>(w >> shift));
    }
    out |= static_cast<uint64_t>(sum) << (32 * half);
  }
  return out;
}

}  // namespace

constexpr Qs8Kernels kQs8PackedTwin = PackedFamily<Pm4AddaB>("packed-twin");

}  // namespace hybrid_sparse
