// Build-time (which files exist for the target) and run-time (what this CPU supports)
// selection of the kernel variant.
#include <cstring>

#include "tflite_ops/kernels/sparse_conv.h"

namespace hybrid_sparse {
namespace {

bool CpuHasAvx2Fma() {
#if defined(HYBRID_SPARSE_HAVE_AVX2) && defined(__x86_64__)
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

struct Table {
  KernelVariant variants[4];
  int count = 0;
  Table() {
    variants[count++] = {"reference", SparseConvRowsReference, 1};
#if defined(HYBRID_SPARSE_HAVE_AVX2)
    if (CpuHasAvx2Fma()) variants[count++] = {"avx2", SparseConvRowsAvx2, 8};
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
