// An int8 (qs8) layer made ready to run: the driver around the qs8 kernels, as ConvPlan is
// for float32. Plain C++, no TFLite types.
//
// Fast path (a variant with a qs8 family; blocks of its block kernel's rows run as blocks,
// other filters row by row, a block expanded into its channels): each image is packed
// into words of 4 input channels (int8, or uint8 = int8 + 128 for a family that multiplies
// unsigned inputs; padding is the input zero point),
// channel-group-major and split into stride phases like ConvPlan's X: word
// X[g][py][px][yq][xq] holds padded position (yq * stride_h + py, xq * stride_w + px) of
// channels 4g..4g+3. Output position q = oy * wq + ox (ox >= out_w: wasted lanes, never
// stored); each nonzero's offset makes x + offset + q the word its tap reads. Tiles of
// positions are the tasks; each writes its [channel][tile] int8 results into the NHWC output.
//
// Tile path (a family with matrix tiles, undilated layers where they are expected to do less
// work): the image is packed as int8 NHWC stride-phase planes (Qs8TileFilter), position
// q = oy * wq + ox of each plane as above; blocks of positions x a group of channels are the
// tasks, their NHWC rows copied into the output.
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
                    const KernelVariant& variant, int max_workers);

  void Run(const int8_t* input, int8_t* output, Parallel* parallel, int workers);

  int64_t macs() const { return macs_; }
  // Output positions per microkernel call; 0: the reference kernel runs the layer.
  int tile() const { return tile_; }
  // Whether the layer runs on the family's matrix tiles.
  bool tiles() const { return tile_microkernel_ != nullptr; }

 private:
  // The microkernel's rows: `rows` channels each (a block kernel's blocks, or 1), `channels`
  // in all (out_c rounded up to whole rows).
  void BuildRows(const Qs8SparseFilter& filter, int rows, int channels);
  // Packs padded rows [row_begin, row_end) (y = yq * stride_h + py) of one image into X.
  void Pack(const int8_t* image, int row_begin, int row_end, int worker);
  // The tile path's filter (entries of nonzero chunks) and its total tile products per block
  // of positions.
  int64_t BuildTiles(const Qs8SparseFilter& filter);
  void PackPlanes(const int8_t* image, int row_begin, int row_end);
  // Both packings: the columns [lo, hi) of phase px whose input column
  // ix = xq * stride_w + px - pad_left lies in the image, on input row iy (none outside it).
  void InsideColumns(int iy, int px, int* lo, int* hi) const;
  // Per channel (weight_sum.size() of them, out_c and padding): the bias corrected for the
  // input offset and zero point, and the requantization's arrays.
  void SetChannels(const std::vector<int64_t>& weight_sum, int32_t input_offset);
  void RunTiles(const int8_t* input, int8_t* output, Parallel* parallel, int workers);
  ConvShape shape_;
  Qs8SparseFilter filter_;
  const int32_t* bias_ = nullptr;
  int32_t input_zero_point_ = 0;
  Qs8Requantization requantization_;
  int max_workers_ = 1;
  int64_t macs_ = 0;
  std::vector<int32_t> scratch_;  // per worker: [num_blocks * block_size]

  // Fast path.
  Qs8SpmmMicrokernelFn microkernel_ = nullptr;
  int tile_ = 0;
  int groups_ = 0;         // ceil(in_c / 4)
  int hq_ = 0, wq_ = 0;    // per-phase padded height and width
  int64_t plane_ = 0;      // words of one (group, phase) plane
  int num_tiles_ = 0;
  std::vector<int32_t> row_begin_, row_end_, offset_, values_, bias_corrected_;
  std::vector<int32_t> multiplier_, shift_;  // the requantization's, padded to whole rows
  Qs8Requantization spmm_requantization_;
  Qs8SpmmFilter spmm_;
  std::vector<uint32_t> x_;      // the packed image, slack for a tile's wasted lanes after it
  uint32_t* x_base_ = nullptr;
  std::vector<int8_t> tile_out_;  // per worker: [spmm_.num_channels][tile]
  size_t tile_out_stride_ = 0;
  TransposeFn transpose_ = nullptr;  // the variant's 32-bit transpose: moves words into X
  Qs8TransposeFn transpose_bytes_ = nullptr;  // results [channel][position] into NHWC
  std::vector<uint32_t> row_buffer_;  // per worker: one input row as packed words
  int32_t input_offset_ = 0;          // 128 where the words hold x + 128

  // Tile path.
  Qs8TileMicrokernelFn tile_microkernel_ = nullptr;
  Qs8TileFilter tile_filter_;
  std::vector<int32_t> entry_begin_, entry_end_;
  std::vector<int64_t> a_offset_;
  std::vector<uint8_t> halves_;
  std::vector<int8_t> b_;
  int8_t* b_base_ = nullptr;    // b_'s first cache line
  std::vector<int8_t> planes_;  // the packed image, slack for the last block's reads after it
  int8_t* planes_base_ = nullptr;
  int64_t plane_bytes_ = 0;
  int num_position_blocks_ = 0;
  std::vector<int8_t> block_out_;  // per worker: [kTileBlocksPerCall * positions][channels]
};

}  // namespace hybrid_sparse

#endif  // TFLITE_OPS_KERNELS_QS8_CONV_PLAN_H_
