#include "tflite_ops/kernels/qs8_conv_plan.h"

#include <algorithm>
#include <cstring>

namespace hybrid_sparse {

std::string Qs8ConvPlan::Build(const ConvShape& shape, const Qs8SparseFilter& filter,
                               const int32_t* bias, int32_t input_zero_point,
                               const Qs8Requantization& requantization,
                               const KernelVariant& variant, int max_workers) {
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
  microkernel_ = filter.block_size == 1 ? variant.qs8 : nullptr;
  tile_ = microkernel_ != nullptr ? variant.qs8_tile : 0;
  if (tile_ == 0) return "";

  const ConvShape& s = shape;
  groups_ = (s.in_c + 3) / 4;
  const int padded_h = (s.out_h - 1) * s.stride_h + (s.kernel_h - 1) * s.dilation_h + 1;
  const int padded_w = (s.out_w - 1) * s.stride_w + (s.kernel_w - 1) * s.dilation_w + 1;
  hq_ = (padded_h + s.stride_h - 1) / s.stride_h;
  wq_ = (padded_w + s.stride_w - 1) / s.stride_w;
  plane_ = static_cast<int64_t>(hq_) * wq_;
  const int64_t words = plane_ * groups_ * s.stride_h * s.stride_w;
  if (words + tile_ > (int64_t{1} << 31)) return "the packed int8 input would exceed 2^31 words";
  num_tiles_ = static_cast<int>((static_cast<int64_t>(s.out_h) * wq_ + tile_ - 1) / tile_);
  x_.assign(words + tile_, 0);
  tile_out_.assign(static_cast<size_t>(max_workers_) * s.out_c * tile_, 0);

  // Rows per output channel, each nonzero's patch column turned into its word offset in X.
  row_begin_.assign(s.out_c, 0);
  row_end_.assign(s.out_c, 0);
  std::vector<int32_t> count(s.out_c, 0);
  for (int j = 0; j < filter.num_nonzero_blocks; ++j) ++count[filter.row_block[j]];
  for (int c = 1; c < s.out_c; ++c) row_begin_[c] = row_begin_[c - 1] + count[c - 1];
  offset_.assign(filter.num_nonzero_blocks, 0);
  values_.assign(filter.num_nonzero_blocks, 0);
  bias_corrected_.assign(s.out_c, 0);
  std::vector<int64_t> weight_sum(s.out_c, 0);
  for (int c = 0; c < s.out_c; ++c) row_end_[c] = row_begin_[c];
  for (int col = 0; col < filter.num_cols; ++col) {
    const int tap = col / groups_, g = col % groups_;
    const int dy = (tap / s.kernel_w) * s.dilation_h, dx = (tap % s.kernel_w) * s.dilation_w;
    const int64_t offset =
        ((static_cast<int64_t>(g) * s.stride_h + dy % s.stride_h) * s.stride_w +
         dx % s.stride_w) * plane_ + static_cast<int64_t>(dy / s.stride_h) * wq_ +
        dx / s.stride_w;
    for (int32_t j = filter.col_ptr[col]; j < filter.col_ptr[col + 1]; ++j) {
      const int c = filter.row_block[j];
      const int8_t* w = filter.values + static_cast<size_t>(j) * 4;
      int32_t word = 0;
      std::memcpy(&word, w, 4);
      offset_[row_end_[c]] = static_cast<int32_t>(offset);
      values_[row_end_[c]] = word;
      ++row_end_[c];
      weight_sum[c] += w[0] + w[1] + w[2] + w[3];
    }
  }
  for (int c = 0; c < s.out_c; ++c)
    bias_corrected_[c] = static_cast<int32_t>((bias != nullptr ? bias[c] : 0) -
                                              (128 + int64_t{input_zero_point}) * weight_sum[c]);
  spmm_.num_channels = s.out_c;
  spmm_.row_begin = row_begin_.data();
  spmm_.row_end = row_end_.data();
  spmm_.offset = offset_.data();
  spmm_.values = values_.data();
  spmm_.bias = bias_corrected_.data();
  spmm_.requantization = &requantization_;
  return "";
}

void Qs8ConvPlan::Pack(const int8_t* image, int group_begin, int group_end) {
  const ConvShape& s = shape_;
  const uint8_t pad = static_cast<uint8_t>(input_zero_point_ + 128);
  const uint32_t pad_word = pad * 0x01010101u;
  for (int g = group_begin; g < group_end; ++g) {
    const int channels = std::min(4, s.in_c - 4 * g);
    for (int py = 0; py < s.stride_h; ++py) {
      for (int px = 0; px < s.stride_w; ++px) {
        uint32_t* plane = x_.data() + ((static_cast<int64_t>(g) * s.stride_h + py) * s.stride_w +
                                       px) * plane_;
        for (int yq = 0; yq < hq_; ++yq) {
          const int iy = yq * s.stride_h + py - s.pad_top;
          uint32_t* row = plane + static_cast<int64_t>(yq) * wq_;
          if (iy < 0 || iy >= s.in_h) {
            std::fill(row, row + wq_, pad_word);
            continue;
          }
          const int8_t* in_row = image + static_cast<int64_t>(iy) * s.in_w * s.in_c + 4 * g;
          for (int xq = 0; xq < wq_; ++xq) {
            const int ix = xq * s.stride_w + px - s.pad_left;
            if (ix < 0 || ix >= s.in_w) {
              row[xq] = pad_word;
              continue;
            }
            uint32_t word = pad_word;  // channels past in_c meet zero weights
            std::memcpy(&word, in_row + static_cast<int64_t>(ix) * s.in_c, channels);
            row[xq] = word ^ (0x80808080u & (0xffffffffu >> (8 * (4 - channels))));
          }
        }
      }
    }
  }
}

void Qs8ConvPlan::Run(const int8_t* input, int8_t* output, Parallel* parallel, int workers) {
  workers = std::max(1, std::min(workers, max_workers_));
  if (tile_ > 0) {
    const ConvShape& s = shape_;
    const int64_t image_in = static_cast<int64_t>(s.in_h) * s.in_w * s.in_c;
    const int64_t image_out = static_cast<int64_t>(s.out_h) * s.out_w * s.out_c;
    for (int n = 0; n < s.batch; ++n) {
      const int8_t* image = input + n * image_in;
      int8_t* out_image = output + n * image_out;
      const int pack_tasks = std::min(groups_, workers);
      parallel->For(pack_tasks, workers, [&](int task, int) {
        Pack(image, groups_ * task / pack_tasks, groups_ * (task + 1) / pack_tasks);
      });
      parallel->For(num_tiles_, workers, [&](int t, int worker) {
        int8_t* y = tile_out_.data() + static_cast<size_t>(worker) * s.out_c * tile_;
        const int q0 = t * tile_;
        microkernel_(spmm_, x_.data() + q0, y);
        for (int i = 0; i < tile_; ++i) {
          const int q = q0 + i, oy = q / wq_, ox = q % wq_;
          if (oy >= s.out_h) break;
          if (ox >= s.out_w) continue;
          int8_t* dst = out_image + (static_cast<int64_t>(oy) * s.out_w + ox) * s.out_c;
          for (int c = 0; c < s.out_c; ++c) dst[c] = y[c * tile_ + i];
        }
      });
    }
    return;
  }
  const int rows = shape_.batch * shape_.out_h;
  const int tasks = std::min(rows, std::max(1, workers) * 4);
  const size_t per_worker = static_cast<size_t>(filter_.num_blocks) * filter_.block_size;
  parallel->For(tasks, workers, [&](int task, int worker) {
    Qs8ConvArgs args{&shape_, &filter_, input, input_zero_point_, bias_, &requantization_,
                     output, scratch_.data() + worker * per_worker};
    Qs8SparseConvRowsReference(args, static_cast<int>(static_cast<int64_t>(rows) * task / tasks),
                               static_cast<int>(static_cast<int64_t>(rows) * (task + 1) / tasks));
  });
}

}  // namespace hybrid_sparse
