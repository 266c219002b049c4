// Build-time (which ISA files exist for the target: HYBRID_SPARSE_HAVE_*) and run-time (what
// this CPU supports) selection of the kernel variant.
#include <cstring>

#if defined(HYBRID_SPARSE_HAVE_QS8_NEONDOT)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)  // Linux's arm64 hwcap bit (older libc headers lack the name)
#endif
#endif

#include "tflite_ops/kernels/geometry.h"
#include "tflite_ops/kernels/sparse_conv.h"

namespace hybrid_sparse {
namespace {

struct Table {
  KernelVariant variants[4];
  int count = 0;
  const Qs8Kernels* qs8[6];
  int qs8_count = 0;
  Table() {
    variants[count++] = {"reference", TransposeReference};
#if defined(HYBRID_SPARSE_HAVE_AVX2)
    // Tiling costs and aligned_tap_cost: fitted to one-thread timings of every tiling, with
    // and without aligned taps, on 3x3 layers (4x4 to 112x112, 16 to 256 channels, stride 1
    // and 2, 50-90 % sparse; benchmarks/results/conv_bench_avx2.md has the layers' timings).
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
      variants[count++] = {"avx2",
                           TransposeAvx2,
                           {{geometry::kAvx2.tile, SpmmAvx2, 1.0f, 1.0f, true, 8},
                            {geometry::kAvx2Wide.tile, SpmmAvx2Wide, 0.92f, 0.0f, false, 8},
                            {geometry::kAvx2Narrow.tile, SpmmAvx2Narrow, 1.07f, 0.9f, true, 8}},
                           0.885f};
#endif
#if defined(HYBRID_SPARSE_HAVE_AVX512)
    // Its layout changes use the AVX2 transpose and its unstructured filters may take AVX2's
    // wide tile: every AVX-512F CPU has AVX2. The wide tile costs as much per position as the
    // zmm one: it wins where it wastes fewer lanes (its pitch is whole ymm, not zmm), and
    // stride-2 layers, whose phase planes make a wide tile's inputs outgrow L1, keep the zmm.
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2"))
      variants[count++] = {"avx512",
                           TransposeAvx2,
                           {{geometry::kAvx512.tile, SpmmAvx512, 1.0f, 1.0f, true, 16},
                            {geometry::kAvx2Wide.tile, SpmmAvx2Wide, 1.0f, 0.0f, false, 8},
                            {geometry::kAvx512Narrow.tile, SpmmAvx512Narrow, 1.125f, 1.0f, true,
                             8}},
                           0.834f};
#endif
    // int8: each variant gets its ISA's best qs8 family this CPU runs.
    const Qs8Kernels* best_qs8 = nullptr;
#if defined(HYBRID_SPARSE_HAVE_QS8_AVX2)
    if (__builtin_cpu_supports("avx2")) qs8[qs8_count++] = best_qs8 = &kQs8Avx2;
#endif
#if defined(HYBRID_SPARSE_HAVE_QS8_AVX512VNNI)
    if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl"))
      qs8[qs8_count++] = best_qs8 = &kQs8Avx512Vnni;
#endif
#if defined(HYBRID_SPARSE_HAVE_QS8_AMX)
    if (best_qs8 == &kQs8Avx512Vnni && Qs8AmxUsable())
      qs8[qs8_count++] = best_qs8 = &Qs8Avx512AmxKernels();
#endif
#if defined(HYBRID_SPARSE_HAVE_QS8_AVX2)
    for (int i = 1; i < count; ++i)  // avx2 runs AVX2's family, avx512 the best
      variants[i].qs8 = std::strcmp(variants[i].name, "avx2") == 0 ? &kQs8Avx2 : best_qs8;
#endif
#if defined(HYBRID_SPARSE_HAVE_NEON)
    variants[count++] = {"neon", TransposeNeon, {{geometry::kNeon.tile, SpmmNeon}}};
    qs8[qs8_count++] = best_qs8 = &kQs8Neon;
#if defined(HYBRID_SPARSE_HAVE_QS8_NEONDOT)
    if (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) qs8[qs8_count++] = best_qs8 = &kQs8NeonDot;
#endif
    variants[count - 1].qs8 = best_qs8;
#endif
#if defined(HYBRID_SPARSE_HAVE_RVV)
    // Built only for rv64gcv targets.
    variants[count++] = {"rvv", TransposeRvv, {{RvvTile(), SpmmRvv}}};
    qs8[qs8_count++] = best_qs8 = &Qs8RvvKernels();
#if defined(HYBRID_SPARSE_RISCV_P)
    // A build for P hardware (there is no hwcap bit for P yet): its int8 layers run P.
    qs8[qs8_count++] = best_qs8 = &kQs8RiscvP;
#endif
    variants[count - 1].qs8 = best_qs8;
#endif
    qs8[qs8_count++] = &kQs8PackedTwin;  // portable: tests run it everywhere
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

const Qs8Kernels* const* AvailableQs8Kernels(int* count) {
  *count = GetTable().qs8_count;
  return GetTable().qs8;
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
