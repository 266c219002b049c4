// A HybridSparseConv2D layer made ready to run by one kernel variant: the driver around the
// microkernels. Plain C++, no TFLite types.
//
// Run cuts the output positions q = oy * Wq + ox (Wq = padded row pitch, so ox >= out_w are
// wasted lanes that are never stored) into tiles of `tile`, and the tiles into bands of
// consecutive tiles. A task is one band (with few tiles, one band's share of the output
// channels): its worker packs the input rows the band reads into its own buffer, channel-major
// X[ic][py][px][yq][xq] (zero padding materialised, strides split into phases: padded
// y = yq * stride_h + py, likewise x), so that for every filter tap the inputs of consecutive
// output positions are consecutive floats; then the microkernel computes the band's tiles into
// a [channel][tile] scratch, which is transposed into the NHWC output. Activation thresholds
// are applied while packing. A band's input is packed and read by one core: a whole-image
// buffer packed by one worker and read by another moved every line between cores and made the
// pack pass slower on two workers than on one. Pointwise convs (1x1, stride 1) pack per tile.
// The filter is re-packed once (Build), with each nonzero's patch index turned into its input
// offset in X: the microkernel's inner loop is then a load at x + offset and FMAs.
// Aligned taps (x86, unstructured filters, where Build's cost estimate says they pay): the row
// pitch is a whole number of the microkernel's vectors and each phase plane is kept once per
// horizontal shift k, copy k holding the plane's columns from k on, so that tap (dy, dx) of a
// tile reads copy dx / stride_w at a vector boundary: no load of the microkernel splits a
// cache line. Where the pitch has no room for the columns the shifts reach, each input row is
// transposed into a row buffer and all copies cut from it.
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
  // Output positions per microkernel call: the tile of the tiling Build chose.
  int tile() const { return tile_; }
  // Whether every tap's input load is aligned (the input kept once per horizontal shift).
  bool aligned_taps() const { return shifts_ > 1; }

 private:
  // Build's steps, in order. The tiling, row pitch and tap layout with the least estimated
  // work (false: no tiling takes the filter).
  bool ChooseTiling(const KernelVariant& variant);
  // Tiles, bands and the layout of a band buffer (*x_size floats); "" or an error.
  std::string PlanBands(int64_t* x_size);
  // The filter row-wise with input offsets (block b's nonzeros: [block_ptr[b], [b + 1])).
  void RepackFilter(std::vector<int32_t>* block_ptr);
  // Input-channel groups sized to L1, one microkernel call each.
  void PlanChannelGroups(const std::vector<int32_t>& block_ptr);
  // Horizontal taps within one phase plane sit 0..MaxShift() floats apart.
  int MaxShift() const;
  // Packs padded row `row` (yq * stride_h + py) of one image into a band buffer whose first
  // row is yq0.
  void PackRow(const float* image, int row, int yq0, float* x);
  // First tile of band `band` (bands differ by at most one tile).
  int BandTile(int band) const;
  // Padded rows [yq0, yq1) (in yq units) that band `band` reads.
  void BandRows(int band, int* yq0, int* yq1) const;
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
  int tile_ = 0;  // the chosen tiling's
  SpmmMicrokernelFn microkernel_ = nullptr;
  int hq_ = 0, wq_ = 0;   // per-phase padded height and width
  int64_t plane_ = 0;     // one channel-phase plane of a band buffer: the tallest
                          // band's rows * wq_, in whole cache lines; pointwise: tile
  int shifts_ = 1;          // copies of each phase plane: 1, or one per horizontal shift
  int64_t row_offset_ = 0;  // copies cut from a row buffer: where a worker's starts in its X
  int64_t row_pitch_ = 0;   // and the floats of one channel's row there; 0: no row buffer
  bool pointwise_ = false;  // 1x1 stride 1: each tile packs its own input slice
  int num_tiles_ = 0;
  int num_bands_ = 1;
  int padded_c_ = 0;      // num_blocks * block_size
  std::vector<int32_t> offset_;
  std::vector<int32_t> bounds_;  // [groups + 1][num_blocks]: group g of block b starts at
                                 // bounds_[g][b]
  std::vector<float> values_, bias_padded_;
  std::vector<SpmmFilter> groups_;  // one microkernel call per input-channel group
  int64_t x_stride_ = 0;        // floats of one worker's buffer, slack for wasted lanes included
  std::vector<float> x_;        // per worker: its band's (pointwise: tile's) packed input
  float* x_base_ = nullptr;     // x_'s first cache line
  std::vector<int> held_;       // per worker, a cache line apart: the band its buffer holds
  std::vector<float> scratch_;  // per worker: [padded_c_][tile] (reference: [padded_c_])
  float* scratch_base_ = nullptr;  // scratch_'s first cache line
  size_t scratch_stride_ = 0;   // floats from one worker's scratch to the next
};

}  // namespace hybrid_sparse

#endif  // TFLITE_OPS_KERNELS_CONV_PLAN_H_
