// qs8 microkernel for the RISC-V P extension (draft 0.21): qs8_spmm_packed.h with pm4adda.b.
// Debian's assemblers do not know P yet, so the instruction is given by its encoding: R-type,
// OP-32 major opcode (0x3b), funct3 5, funct7 0b1000110 (as LLVM's experimental-p MC tests
// encode `pm4adda.b`). Built for every riscv64 target (so CI compiles it); run only by builds
// for P hardware (HYBRID_SPARSE_RISCV_P, see dispatch.cc): qemu and Spike in Debian lack P.
#include <cstdint>

#include "tflite_ops/kernels/geometry.h"
#include "tflite_ops/kernels/qs8_spmm_packed.h"
#include "tflite_ops/kernels/sparse_conv.h"

namespace hybrid_sparse {
namespace {

inline uint64_t Pm4AddaB(uint64_t acc, uint64_t x, uint64_t w) {
  asm(".insn r 0x3b, 5, 0x46, %0, %1, %2" : "+r"(acc) : "r"(x), "r"(w));
  return acc;
}

}  // namespace

constexpr Qs8Kernels kQs8RiscvP = PackedFamily<Pm4AddaB>(geometry::kQs8RiscvP.name);

}  // namespace hybrid_sparse
