#include "tflite_ops/kernels/clock.h"

#include <algorithm>
#include <chrono>
#include <cstdint>

namespace hybrid_sparse {
namespace {

constexpr int kAddsPerIteration = 8;

#if defined(__x86_64__)
#define HYBRID_SPARSE_ADD "add %1, %0\n\t"
#elif defined(__aarch64__) || defined(__riscv)
#define HYBRID_SPARSE_ADD "add %0, %0, %1\n\t"
#endif

#ifdef HYBRID_SPARSE_ADD
// The adds are one dependency chain; the loop counter runs beside it on other ALUs.
uint64_t AddChain(int64_t iterations, uint64_t step) {
  uint64_t x = 0;
  for (int64_t i = 0; i < iterations; ++i) {
    asm volatile(HYBRID_SPARSE_ADD HYBRID_SPARSE_ADD HYBRID_SPARSE_ADD HYBRID_SPARSE_ADD
                 HYBRID_SPARSE_ADD HYBRID_SPARSE_ADD HYBRID_SPARSE_ADD HYBRID_SPARSE_ADD
                 : "+r"(x)
                 : "r"(step));
  }
  return x;
}
#endif

}  // namespace

double MeasureClockGhz() {
#ifdef HYBRID_SPARSE_ADD
  // Many short rounds, the fastest taken: an interruption (another process on the core, an
  // interrupt) only lengthens a round, and a short round is more likely to run undisturbed on
  // a loaded machine than a long one.
  constexpr int64_t kIterations = 40000;  // 320k adds, ~0.1 ms at 3 GHz
  constexpr int kRounds = 200;
  double best = 1e30;
  volatile uint64_t sink = 0;
  sink = sink + AddChain(kIterations * 8, 1);  // wake the core from any idle clock first
  for (int round = 0; round < kRounds; ++round) {
    const auto t0 = std::chrono::steady_clock::now();
    sink = sink + AddChain(kIterations, 1);
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::min(best, s);
  }
  return static_cast<double>(kIterations) * kAddsPerIteration / best * 1e-9;
#else
  return 0.0;
#endif
}

}  // namespace hybrid_sparse
