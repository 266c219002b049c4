// Build-time (which ISA files exist for the target: HYBRID_SPARSE_HAVE_*) and run-time (what
// this CPU supports) selection of the kernel variant.
#include <cstring>

#include "tflite_ops/kernels/sparse_conv.h"

namespace hybrid_sparse {
namespace {

struct Table {
  KernelVariant variants[4];
  int count = 0;
  Table() {
    variants[count++] = {"reference", 0, nullptr, TransposeReference};
#if defined(HYBRID_SPARSE_HAVE_AVX2)
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
      variants[count++] = {"avx2", 64, SpmmAvx2, TransposeAvx2, 32, SpmmAvx2Narrow, true, 0.8f};
#endif
#if defined(HYBRID_SPARSE_HAVE_AVX512)
    // Its layout changes use the AVX2 transpose: every AVX-512F CPU has AVX2.
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2"))
      variants[count++] = {"avx512", 64, SpmmAvx512, TransposeAvx2, 32, SpmmAvx512Narrow, true, 0.7f};
#endif
#if defined(HYBRID_SPARSE_HAVE_NEON)
    variants[count++] = {"neon", 16, SpmmNeon, TransposeNeon};  // NEON is mandatory on AArch64
#endif
#if defined(HYBRID_SPARSE_HAVE_RVV)
    variants[count++] = {"rvv", RvvTile(), SpmmRvv, TransposeRvv};  // built only for rv64gcv targets
#endif
  }
};

const Table& GetTable() {
  static const Table table;
  return table;
}

}  // namespace

const KernelVariant* AvailableKernels(int* count) {
  *count = GetTable().count;
  return GetTable().variants;
}

const KernelVariant* SelectKernel(const char* name) {
  const Table& t = GetTable();
  if (name == nullptr || name[0] == '\0') return &t.variants[t.count - 1];  // fastest last
  for (int i = 0; i < t.count; ++i) {
    if (std::strcmp(t.variants[i].name, name) == 0) return &t.variants[i];
  }
  return nullptr;
}

}  // namespace hybrid_sparse
