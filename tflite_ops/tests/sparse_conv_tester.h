// One tester for every kernel variant: random geometry, weights at a given sparsity, optional
// activation thresholds, checked against a dense direct convolution written independently of
// the sparse format.
#ifndef TFLITE_OPS_TESTS_SPARSE_CONV_TESTER_H_
#define TFLITE_OPS_TESTS_SPARSE_CONV_TESTER_H_

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "tflite_ops/kernels/sparse_conv.h"

namespace hybrid_sparse {
namespace testing {

struct Case {
  ConvShape shape;
  Padding padding = Padding::kSame;
  Activation activation = Activation::kNone;
  int block_size = 1;
  float weight_sparsity = 0.0f;
  float activation_sparsity = 0.0f;  // fraction of inputs that are exactly zero
  bool with_bias = true;
  bool with_thresholds = false;
  std::string Describe() const;
};

// Draws a random case (small enough for emulators when `small`).
Case RandomCase(std::mt19937* rng, bool small);

// Runs `kernel` (through ConvPlan, tasks out of order over 3 workers) on `c` and returns
// max |kernel - dense| / max(|dense|, 1e-6); `aligned_taps` and `tile`, if given, say whether
// the plan chose aligned taps and which tile.
double MaxRelativeError(const KernelVariant& kernel, const Case& c, uint32_t seed,
                        bool* aligned_taps = nullptr, int* tile = nullptr);

}  // namespace testing
}  // namespace hybrid_sparse

#endif  // TFLITE_OPS_TESTS_SPARSE_CONV_TESTER_H_
