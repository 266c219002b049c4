#include "tflite_ops/kernels/conv_plan.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

namespace hybrid_sparse {
namespace {

// Tasks per worker: enough for one done early (or woken late) to take a share of another's.
// Images with fewer bands than that are split by output channels as well.
constexpr int kTasksPerWorker = 2;
// Work of packing one input float per output position, in multiply-adds of one nonzero: the
// per-position cost beside the nonzeros that aligned taps do not speed up; and what each
// further copy of aligned taps adds to it (fitted with the variants' tiling costs, see
// dispatch.cc).
constexpr double kPackedFloatCost = 82.0;
constexpr double kCopyCost = 0.1;
// Largest band buffer: a share of a core's L2 that leaves room for the band's output and the
// weights, so that a band is packed and read from the same cache.
constexpr int64_t kBandBytes = 128 << 10;
// Floats in one 64-byte cache line: the smallest output-channel chunk (no line has two
// writers).
constexpr size_t kLineChannels = 64 / sizeof(float);

// Floats between the starts of two workers' scratch buffers: rounded up to cache lines, plus
// one line, so that no line holds both (each worker writes its own on every multiply-add; a
// shared line made two reference-kernel workers slower than one).
size_t WorkerStride(size_t floats) {
  return (floats + kLineChannels - 1) / kLineChannels * kLineChannels + kLineChannels;
}

// Zero-fills *v with `floats` floats plus slack and returns the first one on a cache line: the
// microkernel's loads and stores keep the alignment of their offsets only from an aligned
// base (an unaligned heap block made the same layer's time vary by a fifth between runs).
float* LineAligned(std::vector<float>* v, size_t floats) {
  v->assign(floats + kLineChannels, 0.0f);
  float* p = v->data();
  while (reinterpret_cast<uintptr_t>(p) % (kLineChannels * sizeof(float)) != 0) ++p;
  return p;
}

}  // namespace

void SerialParallel::For(int num_tasks, int /*max_workers*/,
                         const std::function<void(int, int)>& fn) {
  for (int t = 0; t < num_tasks; ++t) fn(t, 0);
}

std::string ConvPlan::Build(const ConvShape& s, const SparseFilter& f, const float* bias,
                            const float* thresholds, Activation activation,
                            const KernelVariant& variant, int max_workers) {
  shape_ = s;
  filter_ = f;
  bias_ = bias;
  thresholds_ = thresholds;
  activation_ = activation;
  variant_ = variant;
  max_workers_ = std::max(1, max_workers);
  microkernel_ = nullptr;
  padded_c_ = f.num_blocks * f.block_size;
  macs_ = static_cast<int64_t>(s.batch) * s.out_h * s.out_w * f.num_nonzero_blocks * f.block_size;
  if (f.num_cols != s.kernel_h * s.kernel_w * s.in_c || f.out_c != s.out_c)
    return "filter does not match the convolution shape";
  if (variant.tilings[0].microkernel == nullptr) {
    scratch_stride_ = WorkerStride(padded_c_);
    scratch_base_ = LineAligned(&scratch_, static_cast<size_t>(max_workers_) * scratch_stride_);
    return "";
  }
  hq_ = s.out_h + (s.kernel_h - 1) * s.dilation_h / s.stride_h;
  // Pointwise convs need no padding or phases: each tile packs its own slice of the input
  // just before use (per worker, in L1) instead of a whole-image copy making a trip to L3.
  pointwise_ = s.kernel_h == 1 && s.kernel_w == 1 && s.stride_h == 1 && s.stride_w == 1;
  if (!ChooseTiling(variant))
    return std::string("no tiling of ") + variant.name + " takes this filter";
  int64_t x_size = 0;
  const std::string error = PlanBands(&x_size);
  if (!error.empty()) return error;
  std::vector<int32_t> block_ptr;
  RepackFilter(&block_ptr);
  PlanChannelGroups(block_ptr);
  // Zeros: padding columns are never written, so they stay zero in every band.
  x_stride_ = static_cast<int64_t>(WorkerStride(x_size));
  x_base_ = LineAligned(&x_, static_cast<size_t>(x_stride_) * max_workers_);
  held_.assign(static_cast<size_t>(max_workers_) * kLineChannels, -1);
  scratch_stride_ = WorkerStride(static_cast<size_t>(padded_c_) * tile_);
  scratch_base_ = LineAligned(&scratch_, static_cast<size_t>(max_workers_) * scratch_stride_);
  return "";
}

int ConvPlan::MaxShift() const {
  return (shape_.kernel_w - 1) * shape_.dilation_w / shape_.stride_w;
}

bool ConvPlan::ChooseTiling(const KernelVariant& variant) {
  const ConvShape& s = shape_;
  const SparseFilter& f = filter_;
  const int max_shift = MaxShift();
  // The tiling, pitch and tap layout with the fewest (weighted) computed positions. Aligned
  // taps: one copy of each plane per horizontal shift and the pitch a whole number of the
  // microkernel's vectors, so that every tap of every tile loads whole vectors within cache
  // lines (load_fma.md: a misaligned load feeds FMAs at ~0.6 of the aligned rate, and
  // unstructured nonzeros are load-bound); the copies hold the shifted columns, so the pitch
  // needs no room for the shift.
  const int plain_wq = s.out_w + max_shift;
  // What aligned taps cost: the pitch's wasted lanes, paid by the packing and epilogue as
  // well, and the copies (cheap: each row is copied while in L1).
  const double nonzeros = static_cast<double>(f.num_nonzero_blocks) * f.block_size;
  const double packing = kPackedFloatCost * s.in_c;
  double best_cost = std::numeric_limits<double>::infinity();
  for (const Tiling& tiling : variant.tilings) {
    const float tiling_cost = f.block_size > 1 ? tiling.block_cost : tiling.cost;
    if (tiling.tile == 0 || tiling_cost <= 0.0f || (pointwise_ && !tiling.pointwise)) continue;
    for (const bool aligned : {false, true}) {
      if (aligned && !(variant.aligned_tap_cost > 0.0f && tiling.aligned_floats > 0 &&
                       f.block_size == 1 && max_shift > 0 &&
                       max_shift < static_cast<int>(kLineChannels)))
        continue;
      const int a = tiling.aligned_floats;
      const int wq = aligned ? (s.out_w + a - 1) / a * a : plain_wq;
      const int64_t positions = static_cast<int64_t>(s.out_h) * wq;
      const double per_position =
          aligned ? nonzeros * variant.aligned_tap_cost + packing * (1.0 + kCopyCost * max_shift)
                  : nonzeros + packing;
      const int t = tiling.tile;
      const double cost =
          static_cast<double>((positions + t - 1) / t * t) * tiling_cost * per_position;
      if (cost < best_cost) {
        best_cost = cost;
        tile_ = t;
        microkernel_ = tiling.microkernel;
        wq_ = wq;
        shifts_ = aligned ? max_shift + 1 : 1;
      }
    }
  }
  return microkernel_ != nullptr;
}

std::string ConvPlan::PlanBands(int64_t* x_size) {
  const ConvShape& s = shape_;
  const int sh = s.stride_h, sw = s.stride_w;
  const int max_shift = MaxShift();
  const int64_t positions = static_cast<int64_t>(s.out_h) * wq_;
  const int tile = tile_;
  num_tiles_ = static_cast<int>((positions + tile - 1) / tile);
  row_pitch_ = row_offset_ = 0;  // a rebuild for another shape may not need the row buffer
  const int64_t phase_planes = static_cast<int64_t>(s.in_c) * sh * sw;
  const int64_t planes = phase_planes * shifts_;  // of a band buffer, copies included
  // The highest float a tile reads past its start, beyond the last plane's start.
  const int64_t reach = static_cast<int64_t>((s.kernel_h - 1) * s.dilation_h / sh) * wq_ +
                        (shifts_ > 1 ? 0 : max_shift) + tile;
  if (pointwise_) {
    plane_ = tile;
    num_bands_ = num_tiles_;
    *x_size = plane_ * s.in_c;
  } else {
    // Bands are sized without the shifted copies: more bands repack more shared rows (measured
    // slower), and the copies of a band still fit a core's L2.
    const int64_t image_bytes = phase_planes * hq_ * wq_ * static_cast<int64_t>(sizeof(float));
    int64_t bands = std::max<int64_t>(max_workers_ > 1 ? kTasksPerWorker * max_workers_ : 1,
                                      (image_bytes + kBandBytes - 1) / kBandBytes);
    bands = (bands + max_workers_ - 1) / max_workers_ * max_workers_;  // even shares
    num_bands_ = static_cast<int>(std::min<int64_t>(bands, num_tiles_));
    int band_hq = 0;  // rows of the tallest band
    int64_t span = 0;  // floats from a band buffer's start to the end of its last tile
    for (int b = 0; b < num_bands_; ++b) {
      int yq0, yq1;
      BandRows(b, &yq0, &yq1);
      band_hq = std::max(band_hq, yq1 - yq0);
      span = std::max(span, static_cast<int64_t>(BandTile(b + 1)) * tile -
                                static_cast<int64_t>(yq0) * wq_);
    }
    // Planes start on cache lines, an odd number of lines apart: misaligned planes made the
    // microkernel's loads slower, and an even number of lines put the rows a tile reads in
    // every plane of a group into fewer L1 sets (measured slower on stride-2 layers).
    const int64_t lines = (static_cast<int64_t>(band_hq) * wq_ + kLineChannels - 1) /
                          kLineChannels;
    plane_ = (lines | 1) * kLineChannels;
    *x_size = std::max(planes * plane_, (planes - 1) * plane_ + span - tile + reach);
    if (shifts_ > 1 && wq_ < s.out_w + max_shift) {
      // After the planes: one padded input row of every channel and column phase, from which
      // the copies are cut (the pitch has no room for the columns the shifts reach).
      row_pitch_ = (wq_ + max_shift + kLineChannels - 1) / kLineChannels * kLineChannels;
      row_offset_ = (*x_size + kLineChannels - 1) / kLineChannels * kLineChannels;
      *x_size = row_offset_ + row_pitch_ * s.in_c * sw;
    }
  }
  if (*x_size > std::numeric_limits<int32_t>::max())
    return "input is too large for 32-bit offsets (" + std::to_string(*x_size) + " floats)";
  return "";
}

void ConvPlan::RepackFilter(std::vector<int32_t>* block_ptr_out) {
  const ConvShape& s = shape_;
  const SparseFilter& f = filter_;
  const int sh = s.stride_h, sw = s.stride_w;
  // Row-wise repack: block b's nonzeros, each as (input offset, block_size weights), sorted by
  // offset so that the microkernel walks X forwards.
  const int bs = f.block_size;
  std::vector<int32_t>& block_ptr = *block_ptr_out;  // block b: [block_ptr[b], [b + 1])
  block_ptr.assign(f.num_blocks + 1, 0);
  for (int j = 0; j < f.num_nonzero_blocks; ++j) ++block_ptr[f.row_block[j] + 1];
  std::partial_sum(block_ptr.begin(), block_ptr.end(), block_ptr.begin());
  std::vector<int32_t> source(f.num_nonzero_blocks);  // which file nonzero each entry is
  offset_.assign(f.num_nonzero_blocks, 0);
  std::vector<int32_t> fill(block_ptr.begin(), block_ptr.end() - 1);
  for (int k = 0; k < f.num_cols; ++k) {
    const int ic = k % s.in_c, tap = k / s.in_c;
    const int dy = (tap / s.kernel_w) * s.dilation_h, dx = (tap % s.kernel_w) * s.dilation_w;
    const int shift = shifts_ > 1 ? dx / sw : 0;
    const int64_t off =
        (((static_cast<int64_t>(ic) * sh + dy % sh) * sw + dx % sw) * shifts_ + shift) * plane_ +
        static_cast<int64_t>(dy / sh) * wq_ + dx / sw - shift;
    for (int32_t j = f.col_ptr[k]; j < f.col_ptr[k + 1]; ++j) {
      const int32_t dst = fill[f.row_block[j]]++;
      offset_[dst] = static_cast<int32_t>(off);
      source[dst] = j;
    }
  }
  std::vector<int32_t> order(f.num_nonzero_blocks);
  std::iota(order.begin(), order.end(), 0);
  for (int b = 0; b < f.num_blocks; ++b) {
    std::sort(order.begin() + block_ptr[b], order.begin() + block_ptr[b + 1],
              [this](int32_t l, int32_t r) { return offset_[l] < offset_[r]; });
  }
  std::vector<int32_t> sorted_offset(f.num_nonzero_blocks);
  values_.assign(static_cast<size_t>(f.num_nonzero_blocks) * bs, 0.0f);
  for (int i = 0; i < f.num_nonzero_blocks; ++i) {
    sorted_offset[i] = offset_[order[i]];
    std::copy_n(f.values + static_cast<size_t>(source[order[i]]) * bs, bs,
                values_.begin() + static_cast<size_t>(i) * bs);
  }
  offset_.swap(sorted_offset);
}

void ConvPlan::PlanChannelGroups(const std::vector<int32_t>& block_ptr) {
  const ConvShape& s = shape_;
  const SparseFilter& f = filter_;
  // Input-channel groups: a group's channels, one phase plane each over the rows a tile's taps
  // reach, take ~20 KiB of a 32 KiB L1, so they stay cached while every output channel of the
  // tile uses them (measured: 1.3x on 3x3 layers at 80 % sparsity; 8 KiB or no groups are
  // slower). A group takes all phases and copies of its channels: counted in planes instead,
  // stride 2 and aligned taps split channels into more groups, measured slower.
  const int64_t channel_planes = static_cast<int64_t>(s.stride_h) * s.stride_w * shifts_;
  const int64_t planes = channel_planes * s.in_c;
  const int64_t rows_reached = (s.kernel_h - 1) * s.dilation_h / s.stride_h + 1;
  const int64_t plane_bytes = rows_reached * (tile_ + MaxShift() + 16) * sizeof(float);
  const int64_t group_planes =
      std::max<int64_t>(1, (20 << 10) / plane_bytes) * channel_planes;
  const int groups = static_cast<int>((planes + group_planes - 1) / group_planes);
  const int nb = f.num_blocks;
  bounds_.assign(static_cast<size_t>(groups + 1) * nb, 0);
  for (int b = 0; b < nb; ++b) {
    for (int g = 0; g < groups; ++g) {
      const int64_t first_offset = g * group_planes * plane_;
      bounds_[static_cast<size_t>(g) * nb + b] = static_cast<int32_t>(
          std::lower_bound(offset_.begin() + block_ptr[b], offset_.begin() + block_ptr[b + 1],
                           first_offset) - offset_.begin());
    }
    bounds_[static_cast<size_t>(groups) * nb + b] = block_ptr[b + 1];
  }
  bias_padded_.assign(padded_c_, 0.0f);
  if (bias_ != nullptr) std::copy_n(bias_, s.out_c, bias_padded_.begin());

  static const int32_t kNoOffset = 0;
  static const float kNoValue = 0.0f;
  constexpr float kInf = std::numeric_limits<float>::infinity();
  groups_.assign(groups, SpmmFilter{});
  for (int g = 0; g < groups; ++g) {
    SpmmFilter& sf = groups_[g];
    sf.block_size = f.block_size;
    sf.num_blocks = nb;
    sf.block_begin = bounds_.data() + static_cast<size_t>(g) * nb;
    sf.block_end = bounds_.data() + static_cast<size_t>(g + 1) * nb;
    sf.offset = offset_.empty() ? &kNoOffset : offset_.data();
    sf.values = values_.empty() ? &kNoValue : values_.data();
    sf.bias = bias_padded_.data();
    sf.accumulate = g > 0;
    const bool last = g + 1 == groups;
    sf.min = !last || activation_ == Activation::kNone ? -kInf : 0.0f;
    sf.max = last && activation_ == Activation::kRelu6 ? 6.0f : kInf;
  }
}

int ConvPlan::BandTile(int band) const {
  return static_cast<int>(static_cast<int64_t>(num_tiles_) * band / num_bands_);
}

void ConvPlan::BandRows(int band, int* yq0, int* yq1) const {
  const ConvShape& s = shape_;
  const int64_t q0 = static_cast<int64_t>(BandTile(band)) * tile_;
  const int64_t q1 = std::min<int64_t>(static_cast<int64_t>(s.out_h) * wq_,
                                       static_cast<int64_t>(BandTile(band + 1)) * tile_);
  // Valid lanes (ox < out_w) read within their own row; wasted lanes may read anything in the
  // buffer and are never stored.
  *yq0 = static_cast<int>(q0 / wq_);
  *yq1 = static_cast<int>((q1 - 1) / wq_) + (s.kernel_h - 1) * s.dilation_h / s.stride_h + 1;
}

void ConvPlan::PackRow(const float* image, int row, int yq0, float* x) {
  const ConvShape& s = shape_;
  const int sh = s.stride_h, sw = s.stride_w;
  const int yq = row / sh, py = row % sh;
  if (!PhaseRead(py, s.kernel_h, sh, s.dilation_h)) return;
  const int iy = yq * sh + py - s.pad_top;
  const int64_t channel_stride = plane_ * sh * sw * shifts_;
  for (int px = 0; px < sw; ++px) {
    if (!PhaseRead(px, s.kernel_w, sw, s.dilation_w)) continue;
    float* dst_row = x + (static_cast<int64_t>(py) * sw + px) * shifts_ * plane_ +
                     static_cast<int64_t>(yq - yq0) * wq_;
    if (iy < 0 || iy >= s.in_h) {  // a padding row: the buffer may hold another band's row
      for (int ic = 0; ic < s.in_c; ++ic) {
        for (int k = 0; k < shifts_; ++k)
          std::fill_n(dst_row + ic * channel_stride + k * plane_, wq_, 0.0f);
      }
      continue;
    }
    // Columns xq whose input column ix = xq * sw + px - pad_left lies inside the image; the
    // others are padding, never written (Build's zeros). Copy k of a row holds the row's
    // columns from k on: cut from the row buffer where there is one, else from copy 0 (its
    // last k floats are then read by wasted lanes only).
    const bool buffered = row_pitch_ > 0;
    const int columns = buffered ? wq_ + shifts_ - 1 : wq_;
    int lo = std::max(0, (s.pad_left - px + sw - 1) / sw);
    int hi = std::min(columns, (s.in_w - 1 + s.pad_left - px) / sw + 1);
    if (s.in_w - 1 + s.pad_left - px < 0) hi = 0;
    lo = std::min(lo, hi);
    float* src = buffered ? x + row_offset_ + static_cast<int64_t>(px) * s.in_c * row_pitch_
                          : dst_row;
    const int64_t src_stride = buffered ? row_pitch_ : channel_stride;
    if (hi > lo) {
      const int ix = lo * sw + px - s.pad_left;
      variant_.transpose(image + (static_cast<int64_t>(iy) * s.in_w + ix) * s.in_c,
                         static_cast<int64_t>(sw) * s.in_c, hi - lo, s.in_c, thresholds_,
                         src + lo, src_stride);
    }
    for (int ic = 0; ic < s.in_c && shifts_ > 1; ++ic) {
      for (int k = buffered ? 0 : 1; k < shifts_; ++k)
        std::copy_n(src + ic * src_stride + k, buffered ? wq_ : wq_ - k,
                    dst_row + ic * channel_stride + k * plane_);
    }
  }
}

void ConvPlan::ComputeTile(const float* x_tile, int t, int b0, int b1, float* y,
                           float* output_image) const {
  const int tile = tile_;
  const int bs = filter_.block_size;
  const ConvShape& s = shape_;
  const int c0 = b0 * bs, c1 = std::min(s.out_c, b1 * bs);
  float* y_chunk = y + static_cast<int64_t>(c0) * tile;
  for (SpmmFilter group : groups_) {  // the blocks [b0, b1) of each group
    group.num_blocks = b1 - b0;
    group.block_begin += b0;
    group.block_end += b0;
    group.bias += c0;
    microkernel_(group, x_tile, y_chunk);
  }
  // Runs of valid positions (ox < out_w) within one output row each transpose in one go.
  const int64_t q0 = static_cast<int64_t>(t) * tile, q1 = q0 + tile;
  for (int oy = static_cast<int>(q0 / wq_); oy < s.out_h && static_cast<int64_t>(oy) * wq_ < q1;
       ++oy) {
    const int64_t row = static_cast<int64_t>(oy) * wq_;
    const int ox0 = static_cast<int>(std::max<int64_t>(0, q0 - row));
    const int ox1 = static_cast<int>(std::min<int64_t>(s.out_w, q1 - row));
    if (ox1 <= ox0) continue;
    variant_.transpose(y_chunk + (row + ox0 - q0), tile, c1 - c0, ox1 - ox0, nullptr,
                       output_image + (static_cast<int64_t>(oy) * s.out_w + ox0) * s.out_c + c0,
                       s.out_c);
  }
}

int ConvPlan::BlocksPerChunk(int workers) const {
  // Few bands (small images) leave workers idle: split the output channels too, in chunks of
  // whole cache lines of the output, until every worker has a few tasks.
  const int nb = filter_.num_blocks;
  const int bands = shape_.batch * num_bands_;
  if (workers <= 1 || bands >= kTasksPerWorker * workers) return nb;
  const int want = (kTasksPerWorker * workers + bands - 1) / bands;
  const int line_blocks = std::max(1, static_cast<int>(kLineChannels) / filter_.block_size);
  const int lines = (nb + line_blocks - 1) / line_blocks;
  const int chunks = std::min(want, lines);
  return (lines + chunks - 1) / chunks * line_blocks;
}

// All images go through one For: a For costs a wake-up of the pool, which for small layers
// is worth more than the layer itself.
void ConvPlan::Run(const float* input, float* output, Parallel* parallel, int workers) {
  const ConvShape& s = shape_;
  workers = std::max(1, std::min(workers, max_workers_));
  const int64_t in_image = static_cast<int64_t>(s.in_h) * s.in_w * s.in_c;
  const int64_t out_image = static_cast<int64_t>(s.out_h) * s.out_w * s.out_c;
  if (microkernel_ == nullptr) {  // the reference
    parallel->For(s.batch * s.out_h, workers, [&](int row, int worker) {
      const ConvArgs args{&s,          &filter_,    input,  bias_,
                          thresholds_, activation_, output,
                          scratch_base_ + static_cast<size_t>(worker) * scratch_stride_};
      SparseConvRowsReference(args, row, row + 1);
    });
    return;
  }
  const int tile = tile_;
  const int nb = filter_.num_blocks;
  const int per_chunk = BlocksPerChunk(workers);
  const int chunks = (nb + per_chunk - 1) / per_chunk;
  const int tasks = s.batch * num_bands_ * chunks;  // image-major, then band, then chunk
  for (int w = 0; w < workers; ++w) held_[static_cast<size_t>(w) * kLineChannels] = -1;
  parallel->For(tasks, workers, [&](int task, int worker) {
    const int c = task % chunks, band = task / chunks;  // band counts over all images
    const int n = band / num_bands_, b = band % num_bands_;
    float* x = x_base_ + worker * x_stride_;
    float* y = scratch_base_ + worker * scratch_stride_;
    const int b0 = c * per_chunk, b1 = std::min(nb, (c + 1) * per_chunk);
    const float* image = input + n * in_image;
    const int t0 = BandTile(b), t1 = BandTile(b + 1);
    if (pointwise_) {
      const int64_t pixels = static_cast<int64_t>(s.out_h) * s.out_w;
      const int64_t first = static_cast<int64_t>(t0) * tile;
      variant_.transpose(image + first * s.in_c, s.in_c,
                         static_cast<int>(std::min<int64_t>(tile, pixels - first)), s.in_c,
                         thresholds_, x, tile);
      ComputeTile(x, t0, b0, b1, y, output + n * out_image);
      return;
    }
    int yq0, yq1;
    BandRows(b, &yq0, &yq1);
    int& held = held_[static_cast<size_t>(worker) * kLineChannels];
    if (held != band) {
      for (int row = yq0 * s.stride_h; row < yq1 * s.stride_h; ++row)
        PackRow(image, row, yq0, x);
      held = band;
    }
    for (int t = t0; t < t1; ++t)
      ComputeTile(x + static_cast<int64_t>(t) * tile - static_cast<int64_t>(yq0) * wq_, t, b0,
                  b1, y, output + n * out_image);
  });
}

}  // namespace hybrid_sparse
