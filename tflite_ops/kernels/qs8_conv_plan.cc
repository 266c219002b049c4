#include "tflite_ops/kernels/qs8_conv_plan.h"

#include <algorithm>

namespace hybrid_sparse {

std::string Qs8ConvPlan::Build(const ConvShape& shape, const Qs8SparseFilter& filter,
                               const int32_t* bias, int32_t input_zero_point,
                               const Qs8Requantization& requantization, int max_workers) {
  if (filter.num_cols != shape.kernel_h * shape.kernel_w * ((shape.in_c + 3) / 4))
    return "filter has " + std::to_string(filter.num_cols) +
           " columns, expected kernel_h * kernel_w * ceil(in_channels / 4)";
  if (input_zero_point < -128 || input_zero_point > 127)
    return "input zero point " + std::to_string(input_zero_point) + " is not an int8";
  shape_ = shape;
  filter_ = filter;
  bias_ = bias;
  input_zero_point_ = input_zero_point;
  requantization_ = requantization;
  max_workers_ = std::max(1, max_workers);
  // Every nonzero block is block_size x 4 multiply-adds at every output position.
  macs_ = static_cast<int64_t>(filter.num_nonzero_blocks) * filter.block_size * 4 * shape.batch *
          shape.out_h * shape.out_w;
  scratch_.assign(static_cast<size_t>(max_workers_) * filter.num_blocks * filter.block_size, 0);
  return "";
}

void Qs8ConvPlan::Run(const int8_t* input, int8_t* output, Parallel* parallel, int workers) {
  const int rows = shape_.batch * shape_.out_h;
  const int tasks = std::min(rows, std::max(1, workers) * 4);
  const size_t per_worker = static_cast<size_t>(filter_.num_blocks) * filter_.block_size;
  parallel->For(tasks, std::min(workers, max_workers_), [&](int task, int worker) {
    Qs8ConvArgs args{&shape_, &filter_, input, input_zero_point_, bias_, &requantization_,
                     output, scratch_.data() + worker * per_worker};
    Qs8SparseConvRowsReference(args, static_cast<int>(static_cast<int64_t>(rows) * task / tasks),
                               static_cast<int>(static_cast<int64_t>(rows) * (task + 1) / tasks));
  });
}

}  // namespace hybrid_sparse
