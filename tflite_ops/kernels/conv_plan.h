// A HybridSparseConv2D layer made ready to run by one kernel variant: the driver around the
// microkernels. Plain C++, no TFLite types.
//
// Run does two parallel passes over the batch:
//  1. Pack the input into a channel-major buffer X[ic][py][px][yq][xq] (pointwise convs: per
//     tile, just before step 2, into a per-worker buffer X[ic][tile]): zero padding is
//     materialised and strides are split into phases (padded y = yq * stride_h + py, likewise
//     x), so that for every filter tap the inputs of consecutive output positions are
//     consecutive floats. Activation thresholds are applied here, once per input value.
//  2. Output positions q = oy * Wq + ox (Wq = padded row pitch, so ox >= out_w are wasted
//     lanes that are never stored) are cut into tiles of `tile`; the microkernel computes all
//     output channels of a tile into a [channel][tile] scratch, which is transposed into the
//     NHWC output. Tiles are independent, so threads take them from a shared counter.
// The filter is re-packed once (Build), with each nonzero's patch index turned into its input
// offset in X: the microkernel's inner loop is then a load at x + offset and FMAs.
#ifndef TFLITE_OPS_KERNELS_CONV_PLAN_H_
#define TFLITE_OPS_KERNELS_CONV_PLAN_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "tflite_ops/kernels/sparse_conv.h"

namespace hybrid_sparse {

// Runs fn(task, worker) for every task in [0, num_tasks) on at most max_workers workers;
// worker ids are in [0, max_workers). Returns when all tasks are done.
class Parallel {
 public:
  virtual ~Parallel() = default;
  virtual void For(int num_tasks, int max_workers,
                   const std::function<void(int task, int worker)>& fn) = 0;
};

// Runs every task on the calling thread as worker 0.
class SerialParallel : public Parallel {
 public:
  void For(int num_tasks, int max_workers,
           const std::function<void(int task, int worker)>& fn) override;
};

class ConvPlan {
 public:
  // Prepares `filter` (validated by ValidateSparseFilter) for `shape`; bias and thresholds may
  // be nullptr. The filter, bias and threshold arrays must outlive the plan. `max_workers`
  // bounds the worker ids Run's Parallel may use. Returns "" or an error.
  std::string Build(const ConvShape& shape, const SparseFilter& filter, const float* bias,
                    const float* thresholds, Activation activation, const KernelVariant& variant,
                    int max_workers);

  void Run(const float* input, float* output, Parallel* parallel, int workers);

  // Multiply-adds of one invoke (nonzero weights x output pixels), to size the thread count.
  int64_t macs() const { return macs_; }

 private:
  void PackRow(const float* image, int row, float* x);
  // Runs the microkernel for the weight blocks [b0, b1) on the tile whose packed input starts
  // at x_tile and stores their channels at its valid positions into the NHWC output image.
  void ComputeTile(const float* x_tile, int tile, int b0, int b1, float* y,
                   float* output_image) const;
  // Weight blocks per task of the compute pass, for `workers` workers.
  int BlocksPerChunk(int workers) const;

  ConvShape shape_;
  SparseFilter filter_;
  const float* bias_ = nullptr;
  const float* thresholds_ = nullptr;
  Activation activation_ = Activation::kNone;
  KernelVariant variant_{};
  int max_workers_ = 1;
  int64_t macs_ = 0;

  // Fast path geometry (unused by the reference).
  int hq_ = 0, wq_ = 0;   // per-phase padded height and width
  int64_t plane_ = 0;     // hq_ * wq_; pointwise: tile
  bool pointwise_ = false;  // 1x1 stride 1: each tile packs its own input slice
  int num_tiles_ = 0;
  int padded_c_ = 0;      // num_blocks * block_size
  std::vector<int32_t> offset_;
  std::vector<int32_t> bounds_;  // [groups + 1][num_blocks]: group g of block b starts at
                                 // bounds_[g][b]
  std::vector<float> values_, bias_padded_;
  std::vector<SpmmFilter> groups_;  // one microkernel call per input-channel group
  int64_t x_image_ = 0;         // floats of one packed image, slack for the last tile included
  std::vector<float> x_;        // packed input of every image (pointwise: of every worker)
  std::vector<float> scratch_;  // per worker: [padded_c_][tile] (reference: [padded_c_])
  size_t scratch_stride_ = 0;   // floats from one worker's scratch to the next
};

}  // namespace hybrid_sparse

#endif  // TFLITE_OPS_KERNELS_CONV_PLAN_H_
