// What bounds the unstructured microkernel on this x86 core: the throughput of vector FMAs
// whose multiplicand comes from memory (one input load per FMA, as for a nonzero of an
// unstructured filter) against FMAs on registers only (the dense kernel's regime, where a
// loaded value feeds many FMAs). Prints one Markdown table; the x86 load costs of the
// analytic profile (python/hybrid_pruning/targets.py) cite it. Each loop keeps eight
// independent accumulators in registers and reads a 4 KiB buffer (L1-resident), so only the
// load and FMA pipes limit it.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>

namespace {

constexpr int64_t kIterations = 20000000;  // of eight FMAs each
constexpr int kRounds = 5;

volatile float g_sink;

// One timed loop; returns a value of its accumulators so that none is dead code.
using LoopFn = float (*)(const float* buf, int offset);

double BestSeconds(LoopFn loop, const float* buf, int offset) {
  double best = 1e30;
  for (int r = 0; r < kRounds; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    g_sink = loop(buf, offset);
    best = std::min(best,
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

// `offset`: floats past the 64-byte boundary where each group of eight loads starts.
__attribute__((target("avx2,fma"))) float YmmFromMemory(const float* buf, int offset) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
  const __m256 w = _mm256_set1_ps(0.5f);
  for (int64_t n = 0; n < kIterations; ++n) {
    const float* q = buf + (n & 7) * 64 + offset;
    a0 = _mm256_fmadd_ps(w, _mm256_loadu_ps(q), a0);
    a1 = _mm256_fmadd_ps(w, _mm256_loadu_ps(q + 8), a1);
    a2 = _mm256_fmadd_ps(w, _mm256_loadu_ps(q + 16), a2);
    a3 = _mm256_fmadd_ps(w, _mm256_loadu_ps(q + 24), a3);
    a4 = _mm256_fmadd_ps(w, _mm256_loadu_ps(q + 32), a4);
    a5 = _mm256_fmadd_ps(w, _mm256_loadu_ps(q + 40), a5);
    a6 = _mm256_fmadd_ps(w, _mm256_loadu_ps(q + 48), a6);
    a7 = _mm256_fmadd_ps(w, _mm256_loadu_ps(q + 56), a7);
  }
  const __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                                 _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
  return _mm256_cvtss_f32(s);
}

__attribute__((target("avx2,fma"))) float YmmRegisters(const float* /*buf*/, int /*offset*/) {
  // Distinct starts: equal accumulators with equal updates would be merged into one chain.
  __m256 a0 = _mm256_set1_ps(0), a1 = _mm256_set1_ps(1), a2 = _mm256_set1_ps(2),
         a3 = _mm256_set1_ps(3), a4 = _mm256_set1_ps(4), a5 = _mm256_set1_ps(5),
         a6 = _mm256_set1_ps(6), a7 = _mm256_set1_ps(7);
  __m256 w = _mm256_set1_ps(0.5f), x = _mm256_set1_ps(0.25f);
  asm("" : "+x"(w), "+x"(x));  // opaque: w * x of constants would fold the FMAs into adds
  for (int64_t n = 0; n < kIterations; ++n) {
    a0 = _mm256_fmadd_ps(w, x, a0);
    a1 = _mm256_fmadd_ps(w, x, a1);
    a2 = _mm256_fmadd_ps(w, x, a2);
    a3 = _mm256_fmadd_ps(w, x, a3);
    a4 = _mm256_fmadd_ps(w, x, a4);
    a5 = _mm256_fmadd_ps(w, x, a5);
    a6 = _mm256_fmadd_ps(w, x, a6);
    a7 = _mm256_fmadd_ps(w, x, a7);
  }
  const __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                                 _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
  return _mm256_cvtss_f32(s);
}

__attribute__((target("avx512f"))) float ZmmFromMemory(const float* buf, int offset) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
  const __m512 w = _mm512_set1_ps(0.5f);
  for (int64_t n = 0; n < kIterations; ++n) {
    const float* q = buf + (n & 7) * 128 + offset;
    a0 = _mm512_fmadd_ps(w, _mm512_loadu_ps(q), a0);
    a1 = _mm512_fmadd_ps(w, _mm512_loadu_ps(q + 16), a1);
    a2 = _mm512_fmadd_ps(w, _mm512_loadu_ps(q + 32), a2);
    a3 = _mm512_fmadd_ps(w, _mm512_loadu_ps(q + 48), a3);
    a4 = _mm512_fmadd_ps(w, _mm512_loadu_ps(q + 64), a4);
    a5 = _mm512_fmadd_ps(w, _mm512_loadu_ps(q + 80), a5);
    a6 = _mm512_fmadd_ps(w, _mm512_loadu_ps(q + 96), a6);
    a7 = _mm512_fmadd_ps(w, _mm512_loadu_ps(q + 112), a7);
  }
  const __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                                 _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
  return _mm512_cvtss_f32(s);
}

__attribute__((target("avx512f"))) float ZmmRegisters(const float* /*buf*/, int /*offset*/) {
  __m512 a0 = _mm512_set1_ps(0), a1 = _mm512_set1_ps(1), a2 = _mm512_set1_ps(2),
         a3 = _mm512_set1_ps(3), a4 = _mm512_set1_ps(4), a5 = _mm512_set1_ps(5),
         a6 = _mm512_set1_ps(6), a7 = _mm512_set1_ps(7);
  __m512 w = _mm512_set1_ps(0.5f), x = _mm512_set1_ps(0.25f);
  asm("" : "+v"(w), "+v"(x));
  for (int64_t n = 0; n < kIterations; ++n) {
    a0 = _mm512_fmadd_ps(w, x, a0);
    a1 = _mm512_fmadd_ps(w, x, a1);
    a2 = _mm512_fmadd_ps(w, x, a2);
    a3 = _mm512_fmadd_ps(w, x, a3);
    a4 = _mm512_fmadd_ps(w, x, a4);
    a5 = _mm512_fmadd_ps(w, x, a5);
    a6 = _mm512_fmadd_ps(w, x, a6);
    a7 = _mm512_fmadd_ps(w, x, a7);
  }
  const __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                                 _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
  return _mm512_cvtss_f32(s);
}

std::string CpuName() {
  std::ifstream info("/proc/cpuinfo");
  for (std::string line; std::getline(info, line);) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "unknown x86-64 CPU";
}

void Row(const char* what, int lanes, double seconds, double register_seconds) {
  const double fmas = 8.0 * kIterations;
  std::printf("| %s | %d | %.2f | %.1f | %.2f |\n", what, lanes, fmas / seconds * 1e-9,
              fmas * lanes * 2 / seconds * 1e-9, register_seconds / seconds);
}

}  // namespace

int main() {
  char date[16];
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof(date), "%Y-%m-%d", std::gmtime(&now));
  std::printf("# Vector FMA throughput: multiplicand loaded vs in a register\n\n");
  std::printf("Machine: %s, %u logical CPUs; %s. One thread.\n", CpuName().c_str(),
              std::thread::hardware_concurrency(), date);
  std::printf("Command: `./bazelw run //tests/bench:load_fma_bench > "
              "benchmarks/results/load_fma.md`\n\n");
  std::printf("An unstructured nonzero loads one input vector per FMA; a dense kernel (and a "
              "block of 4) reuses each load for several FMAs.\n\n");
  std::vector<float> storage(8 * 128 + 16 + 16, 1.0f);  // 8 groups, an offset, alignment slack
  float* buf = storage.data();
  while (reinterpret_cast<uintptr_t>(buf) % 64 != 0) ++buf;
  std::printf("| FMA multiplicand | fp32 lanes | FMAs per ns | GFLOP/s | of registers-only rate |\n");
  std::printf("| --- | ---: | ---: | ---: | ---: |\n");
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    const double reg = BestSeconds(YmmRegisters, buf, 0);
    Row("YMM register", 8, reg, reg);
    Row("YMM load, 32-byte aligned", 8, BestSeconds(YmmFromMemory, buf, 0), reg);
    Row("YMM load, misaligned by 12 bytes", 8, BestSeconds(YmmFromMemory, buf, 3), reg);
  }
  if (__builtin_cpu_supports("avx512f")) {
    const double reg = BestSeconds(ZmmRegisters, buf, 0);
    Row("ZMM register", 16, reg, reg);
    Row("ZMM load, 64-byte aligned", 16, BestSeconds(ZmmFromMemory, buf, 0), reg);
    Row("ZMM load, misaligned by 12 bytes", 16, BestSeconds(ZmmFromMemory, buf, 3), reg);
  }
  return 0;
}

#else  // not x86-64

int main() {
  std::printf("load_fma_bench measures x86-64 vector units only.\n");
  return 0;
}

#endif
