// An int8 (qs8) layer made ready to run: the driver around the qs8 kernels, as ConvPlan is
// for float32. Plain C++, no TFLite types.
#ifndef TFLITE_OPS_KERNELS_QS8_CONV_PLAN_H_
#define TFLITE_OPS_KERNELS_QS8_CONV_PLAN_H_

#include <cstdint>
#include <string>
#include <vector>

#include "tflite_ops/kernels/conv_plan.h"
#include "tflite_ops/kernels/sparse_conv.h"

namespace hybrid_sparse {

class Qs8ConvPlan {
 public:
  // `filter` (validated) and `bias` (or nullptr) must outlive the plan; the requantization's
  // arrays too. Returns "" or an error.
  std::string Build(const ConvShape& shape, const Qs8SparseFilter& filter, const int32_t* bias,
                    int32_t input_zero_point, const Qs8Requantization& requantization,
                    int max_workers);

  void Run(const int8_t* input, int8_t* output, Parallel* parallel, int workers);

  int64_t macs() const { return macs_; }

 private:
  ConvShape shape_;
  Qs8SparseFilter filter_;
  const int32_t* bias_ = nullptr;
  int32_t input_zero_point_ = 0;
  Qs8Requantization requantization_;
  int max_workers_ = 1;
  int64_t macs_ = 0;
  std::vector<int32_t> scratch_;  // per worker: [num_blocks * block_size]
};

}  // namespace hybrid_sparse

#endif  // TFLITE_OPS_KERNELS_QS8_CONV_PLAN_H_
