#include "tflite_ops/tests/sparse_conv_tester.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <sstream>

#include "tflite_ops/kernels/conv_plan.h"
#include "tflite_ops/tests/random_geometry.h"

namespace hybrid_sparse {
namespace testing {

std::string Case::Describe() const {
  std::ostringstream s;
  const ConvShape& g = shape;
  s << "in " << g.batch << "x" << g.in_h << "x" << g.in_w << "x" << g.in_c << " out_c " << g.out_c
    << " kernel " << g.kernel_h << "x" << g.kernel_w << " stride " << g.stride_h << "x"
    << g.stride_w << " dilation " << g.dilation_h << "x" << g.dilation_w << " padding "
    << (padding == Padding::kSame ? "SAME" : "VALID") << " act " << static_cast<int>(activation)
    << " block " << block_size << " w_sparsity " << weight_sparsity << " a_sparsity "
    << activation_sparsity << " bias " << with_bias << " thresholds " << with_thresholds;
  return s.str();
}

Case RandomCase(std::mt19937* rng, bool small) {
  auto uniform = [rng](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(*rng); };
  Case c;
  ConvShape& s = c.shape;
  const int max_hw = small ? 7 : 16, max_c = small ? 9 : 40;
  s = RandomGeometry(rng, {max_hw, max_hw, max_c, 5, 3, 3}, &c.padding);
  c.activation = static_cast<Activation>(uniform(0, 2));
  const int blocks[] = {1, 1, 2, 4, 8, 16};
  c.block_size = blocks[uniform(0, 5)];
  const float sparsities[] = {0.0f, 0.5f, 0.7f, 0.8f, 0.9f, 0.95f, 0.99f};
  c.weight_sparsity = sparsities[uniform(0, 6)];
  c.activation_sparsity = uniform(0, 1) ? 0.5f : 0.0f;
  c.with_bias = uniform(0, 3) != 0;
  c.with_thresholds = uniform(0, 2) == 0;
  return c;
}

namespace {

struct Packed {
  std::vector<int32_t> col_ptr;
  std::vector<int16_t> row_block;
  std::vector<float> values;
  SparseFilter filter;
};

// weights[oc][k], k in NHWC patch order.
Packed Pack(const std::vector<float>& weights, int out_c, int num_cols, int block_size) {
  Packed p;
  const int num_blocks = (out_c + block_size - 1) / block_size;
  p.col_ptr.push_back(0);
  for (int k = 0; k < num_cols; ++k) {
    for (int b = 0; b < num_blocks; ++b) {
      bool any = false;
      for (int r = 0; r < block_size; ++r) {
        const int oc = b * block_size + r;
        any |= oc < out_c && weights[static_cast<size_t>(oc) * num_cols + k] != 0.0f;
      }
      if (!any) continue;
      p.row_block.push_back(static_cast<int16_t>(b));
      for (int r = 0; r < block_size; ++r) {
        const int oc = b * block_size + r;
        p.values.push_back(oc < out_c ? weights[static_cast<size_t>(oc) * num_cols + k] : 0.0f);
      }
    }
    p.col_ptr.push_back(static_cast<int32_t>(p.row_block.size()));
  }
  static const float kNoValue = 0.0f;
  static const int16_t kNoIndex = 0;
  p.filter.out_c = out_c;
  p.filter.num_cols = num_cols;
  p.filter.block_size = block_size;
  p.filter.num_blocks = num_blocks;
  p.filter.num_nonzero_blocks = static_cast<int>(p.row_block.size());
  p.filter.col_ptr = p.col_ptr.data();
  p.filter.row_block = p.row_block.empty() ? &kNoIndex : p.row_block.data();
  p.filter.values = p.values.empty() ? &kNoValue : p.values.data();
  return p;
}

// Runs tasks last to first, spread over the workers, as a thread pool might: a plan that
// depended on task order or shared a worker's scratch would fail.
class OutOfOrderParallel : public Parallel {
 public:
  void For(int num_tasks, int max_workers,
           const std::function<void(int task, int worker)>& fn) override {
    for (int t = num_tasks - 1; t >= 0; --t) fn(t, t % max_workers);
  }
};

}  // namespace

double MaxRelativeError(const KernelVariant& kernel, const Case& c, uint32_t seed,
                        bool* aligned_taps, int* tile) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  const ConvShape& s = c.shape;
  const int num_cols = s.kernel_h * s.kernel_w * s.in_c;
  std::vector<float> w(static_cast<size_t>(s.out_c) * num_cols);
  for (float& v : w) v = unit(rng) < c.weight_sparsity ? 0.0f : normal(rng);
  std::vector<float> input(static_cast<size_t>(s.batch) * s.in_h * s.in_w * s.in_c);
  for (float& v : input) v = unit(rng) < c.activation_sparsity ? 0.0f : normal(rng);
  std::vector<float> bias(s.out_c);
  for (float& v : bias) v = normal(rng);
  std::vector<float> thresholds(s.in_c);
  for (float& v : thresholds) v = 0.5f * unit(rng);

  // Dense direct convolution on the thresholded input: the definition of the op.
  std::vector<float> expected(static_cast<size_t>(s.batch) * s.out_h * s.out_w * s.out_c);
  for (int n = 0; n < s.batch; ++n)
    for (int oy = 0; oy < s.out_h; ++oy)
      for (int ox = 0; ox < s.out_w; ++ox)
        for (int oc = 0; oc < s.out_c; ++oc) {
          double acc = c.with_bias ? bias[oc] : 0.0;
          for (int ky = 0; ky < s.kernel_h; ++ky)
            for (int kx = 0; kx < s.kernel_w; ++kx)
              for (int ic = 0; ic < s.in_c; ++ic) {
                const int iy = oy * s.stride_h - s.pad_top + ky * s.dilation_h;
                const int ix = ox * s.stride_w - s.pad_left + kx * s.dilation_w;
                if (iy < 0 || iy >= s.in_h || ix < 0 || ix >= s.in_w) continue;
                float x = input[((static_cast<size_t>(n) * s.in_h + iy) * s.in_w + ix) * s.in_c + ic];
                if (c.with_thresholds && std::fabs(x) < thresholds[ic]) x = 0.0f;
                acc += static_cast<double>(x) *
                       w[static_cast<size_t>(oc) * num_cols + (ky * s.kernel_w + kx) * s.in_c + ic];
              }
          expected[((static_cast<size_t>(n) * s.out_h + oy) * s.out_w + ox) * s.out_c + oc] =
              ApplyActivation(static_cast<float>(acc), c.activation);
        }

  Packed packed = Pack(w, s.out_c, num_cols, c.block_size);
  std::vector<float> output(expected.size(), -12345.0f);
  ConvPlan plan;
  const std::string error =
      plan.Build(s, packed.filter, c.with_bias ? bias.data() : nullptr,
                 c.with_thresholds ? thresholds.data() : nullptr, c.activation, kernel,
                 /*max_workers=*/3);
  if (!error.empty()) return std::numeric_limits<double>::infinity();
  if (aligned_taps != nullptr) *aligned_taps = plan.aligned_taps();
  if (tile != nullptr) *tile = plan.tile();
  OutOfOrderParallel parallel;
  plan.Run(input.data(), output.data(), &parallel, 3);
  double max_err = 0.0, max_ref = 1e-6;
  for (size_t i = 0; i < expected.size(); ++i) {
    max_err = std::max(max_err, static_cast<double>(std::fabs(output[i] - expected[i])));
    max_ref = std::max(max_ref, static_cast<double>(std::fabs(expected[i])));
  }
  return max_err / max_ref;
}

}  // namespace testing
}  // namespace hybrid_sparse
