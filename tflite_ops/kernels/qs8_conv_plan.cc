#include "tflite_ops/kernels/qs8_conv_plan.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "tflite_ops/kernels/geometry.h"

namespace hybrid_sparse {
namespace {

constexpr size_t kSerialPackWords = 8192;
constexpr int kAlignWords = 16;

constexpr int kTilePositions = geometry::kQs8Amx.positions;
constexpr int kTileChannels = geometry::kQs8Amx.channels;
constexpr int kChunkBytes = geometry::kQs8Amx.chunk_bytes;
// Tile rows are 64 bytes: on cache lines, each is one line (a row across two costs about two
// loads; misaligned weights halved the tile path's speed on some layers).
int8_t* AlignToLine(int8_t* p) {
  return p + (kChunkBytes - reinterpret_cast<uintptr_t>(p) % kChunkBytes) % kChunkBytes;
}

// Blocks of positions per tile call: its int8 results (8 KB) stay in L1 until copied out.
constexpr int kTileBlocksPerCall = 8;
// A tile product's time in vector dot products of 16 lanes: where one-thread timings of both
// paths cross on the 3x3 layers of conv_bench_int8_xeon.md and the digits ResNet's.
constexpr double kTileProductCost = 20.0;

void TransposeBytesPortable(const int8_t* src, int src_stride, int rows, int cols, int8_t* dst,
                            int64_t dst_stride) {
  for (int p = 0; p < cols; ++p)
    for (int c = 0; c < rows; ++c) dst[p * dst_stride + c] = src[c * src_stride + p];
}

// n words from src to dst, each xor flip (0x80808080: int8 -> uint8, x + 128), in one pass
// of the compiler's generic 16-byte vectors (SSE2 / NEON, baseline on x86-64 / AArch64):
// -O2 does not vectorise the byte loop, and a narrower one was most of a mid-sized layer's
// packing (docs/int8.md).
void CopyFlipWords(const int8_t* src, int64_t n, uint32_t flip, uint32_t* dst) {
  typedef uint32_t Words4 __attribute__((vector_size(16)));
  const Words4 mask = {flip, flip, flip, flip};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    Words4 v;
    std::memcpy(&v, src + 4 * i, 16);
    v ^= mask;
    std::memcpy(dst + i, &v, 16);
  }
  for (; i < n; ++i) {
    uint32_t w;
    std::memcpy(&w, src + 4 * i, 4);
    dst[i] = w ^ flip;
  }
}

// n words of kBytes channels each, src advancing by step bytes, over the padding's other
// bytes. A constant size compiles to plain loads; the variable-length memcpy this replaces
// was a libc call per word, most of a few-channel layer's time (an RGB or grey stem).
template <int kBytes>
void PackWords(const int8_t* src, int64_t step, int n, uint32_t pad_word, uint32_t flip,
               uint32_t* dst) {
  constexpr uint32_t kMask = kBytes == 4 ? 0xffffffffu : (1u << (8 * kBytes)) - 1;
  const uint32_t pad = pad_word & ~kMask;
  const uint32_t bits = flip & kMask;
  for (int i = 0; i < n; ++i) {
    uint32_t word = 0;
    std::memcpy(&word, src + i * step, kBytes);
    dst[i] = (word | pad) ^ bits;
  }
}

// Whether every channel's accumulator keeps h + 2^(r-1) inside int32 (h: the rounding doubling
// high multiply of it, |h| <= |acc|; r: the right shift), as the vector requantizations'
// 32-bit rounding step needs (qs8_avx512vnni.cc). Bounds |acc| by |bias| + 255 * sum |w|.
bool VectorRequantizationIsExact(const Qs8SparseFilter& filter, const int32_t* bias,
                                 const Qs8Requantization& q) {
  if (q.rounding == Rounding::kSingle) return true;  // all in 64 bits
  std::vector<int64_t> bound(filter.num_blocks * filter.block_size, 0);
  for (int32_t j = 0; j < filter.num_nonzero_blocks; ++j)
    for (int r = 0; r < filter.block_size; ++r) {
      const int8_t* w = filter.values + (static_cast<size_t>(j) * filter.block_size + r) * 4;
      bound[filter.row_block[j] * filter.block_size + r] +=
          255 * (std::abs(w[0]) + std::abs(w[1]) + std::abs(w[2]) + std::abs(w[3]));
    }
  for (int c = 0; c < filter.out_c; ++c) {
    const int64_t acc = bound[c] + (bias != nullptr ? std::abs(int64_t{bias[c]}) : 0);
    const int64_t half = q.shift[c] < 0 ? int64_t{1} << (-q.shift[c] - 1) : 0;
    if (acc + half >= (int64_t{1} << 31)) return false;
  }
  return true;
}

}  // namespace


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
  microkernel_ = nullptr;
  tile_microkernel_ = nullptr;
  tile_ = 0;
  if (variant.qs8 == nullptr) return "";
  // Accumulators near 2^31 (biases or sums no trained layer has): the reference.
  if (!VectorRequantizationIsExact(filter, bias, requantization)) return "";
  const Qs8Kernels& family = *variant.qs8;
  // Both paths' stride-phase planes: hq_ x wq_ positions each.
  const int padded_h =
      (shape.out_h - 1) * shape.stride_h + (shape.kernel_h - 1) * shape.dilation_h + 1;
  const int padded_w =
      (shape.out_w - 1) * shape.stride_w + (shape.kernel_w - 1) * shape.dilation_w + 1;
  hq_ = (padded_h + shape.stride_h - 1) / shape.stride_h;
  wq_ = (padded_w + shape.stride_w - 1) / shape.stride_w;
  if (family.tile_microkernel != nullptr && shape.dilation_h == 1 && shape.dilation_w == 1) {
    const int64_t products = BuildTiles(filter);
    // A vector microkernel's work: a dot product of `lanes` positions per nonzero word.
    const double vector_work = static_cast<double>(macs_) / (4.0 * family.lanes);
    const double tile_work = static_cast<double>(products) * num_position_blocks_ *
                             shape.batch * kTileProductCost;
    if (family.tilings[0].tile == 0 || tile_work < vector_work) {
      tile_microkernel_ = family.tile_microkernel;
      tile_ = kTilePositions;
      block_out_.assign(static_cast<size_t>(max_workers_) * kTileBlocksPerCall *
                            kTilePositions * kTileChannels, 0);
      return "";
    }
    b_.clear();
    b_.shrink_to_fit();
    planes_.clear();
    planes_.shrink_to_fit();
  }
  // Blocks of the family's block kernel run as blocks; any other filter runs row by row
  // (a block expanded into its channels' nonzero words).
  const int rows = filter.block_size == geometry::kQs8BlockRows &&
                   family.block_tilings[0].tile != 0 ? filter.block_size : 1;
  const Qs8Tiling* tilings = rows > 1 ? family.block_tilings : family.tilings;

  const ConvShape& s = shape;
  groups_ = (s.in_c + 3) / 4;
  // The tiling with the least work per nonzero: a call broadcasts the weight once and loads
  // and multiplies one vector per `lanes` positions of its tile.
  const int64_t positions = static_cast<int64_t>(s.out_h) * wq_;
  double best = 0.0;
  for (int t = 0; t < kMaxQs8Tilings; ++t) {
    const Qs8Tiling& tiling = tilings[t];
    if (tiling.tile == 0) continue;
    const double cost = static_cast<double>((positions + tiling.tile - 1) / tiling.tile) *
                        (1.0 + 2.0 * tiling.tile / family.lanes);
    if (microkernel_ == nullptr || cost <= best) {
      best = cost;
      microkernel_ = tiling.microkernel;
      tile_ = tiling.tile;
    }
  }
  if (microkernel_ == nullptr) return "";  // no vector tiling: the reference
  plane_ = static_cast<int64_t>(hq_) * wq_;
  const int64_t words = plane_ * groups_ * s.stride_h * s.stride_w;
  if (words + tile_ > (int64_t{1} << 31)) return "the packed int8 input would exceed 2^31 words";
  num_tiles_ = static_cast<int>((static_cast<int64_t>(s.out_h) * wq_ + tile_ - 1) / tile_);
  x_.assign(words + tile_ + 2 * kAlignWords, 0);
  // Tiles start on a cache line: a 1x1 conv's loads, and one in every 16 of a wider tap's,
  // are then aligned (a load across two lines costs about two, load_fma.md).
  const uintptr_t misaligned = (reinterpret_cast<uintptr_t>(x_.data()) / 4) % kAlignWords;
  x_base_ = x_.data() + (kAlignWords - misaligned) % kAlignWords;
  transpose_ = variant.transpose;
  transpose_bytes_ = family.transpose != nullptr ? family.transpose : TransposeBytesPortable;
  input_offset_ = family.unsigned_input ? 128 : 0;
  // Channels as the microkernel computes them: whole blocks (the last one padded).
  const int channels = rows > 1 ? filter.num_blocks * rows : s.out_c;
  row_buffer_.assign(static_cast<size_t>(max_workers_) * s.in_w * groups_, 0);
  // Each worker's results, with the slack the byte transpose may read past them.
  tile_out_stride_ = static_cast<size_t>(channels) * tile_ + kQs8TransposeSlack;
  tile_out_.assign(static_cast<size_t>(max_workers_) * tile_out_stride_, 0);
  BuildRows(filter, rows, channels);
  // Rows without nonzeros give every position the same result: written here once into each
  // worker's results, which the microkernels leave alone there (on a sparse layer of few
  // input channels, many of its channels' requantizations).
  for (int b = 0; b < channels / rows; ++b) {
    if (row_begin_[b] != row_end_[b]) continue;
    for (int c = b * rows; c < (b + 1) * rows; ++c) {
      const int8_t value = Requantize(bias_corrected_[c], c, spmm_requantization_);
      for (int w = 0; w < max_workers_; ++w)
        std::memset(tile_out_.data() + w * tile_out_stride_ + static_cast<size_t>(c) * tile_,
                    value, tile_);
    }
  }
  return "";
}

int64_t Qs8ConvPlan::BuildTiles(const Qs8SparseFilter& filter) {
  const ConvShape& s = shape_;
  const int c_in = s.in_c, taps = s.kernel_h * s.kernel_w, groups4 = (c_in + 3) / 4;
  plane_bytes_ = static_cast<int64_t>(hq_) * wq_ * c_in;
  num_position_blocks_ = static_cast<int>(
      (static_cast<int64_t>(s.out_h) * wq_ + kTilePositions - 1) / kTilePositions);
  // The last block reads up to a block, a kernel row's run and a chunk past the planes.
  planes_.assign(plane_bytes_ * s.stride_h * s.stride_w +
                     static_cast<int64_t>(kTilePositions + s.kernel_w) * c_in + 3 * kChunkBytes,
                 0);
  planes_base_ = AlignToLine(planes_.data());
  // The filter densely, [out_c][tap][in_c].
  std::vector<int8_t> dense(static_cast<size_t>(s.out_c) * taps * c_in, 0);
  const int bs = filter.block_size;
  for (int col = 0; col < filter.num_cols; ++col) {
    const int tap = col / groups4, g = col % groups4;
    for (int32_t j = filter.col_ptr[col]; j < filter.col_ptr[col + 1]; ++j)
      for (int r = 0; r < bs; ++r) {
        const int c = filter.row_block[j] * bs + r;
        if (c >= s.out_c) continue;
        for (int t = 0; t < 4 && 4 * g + t < c_in; ++t)
          dense[(static_cast<size_t>(c) * taps + tap) * c_in + 4 * g + t] =
              filter.values[(static_cast<size_t>(j) * bs + r) * 4 + t];
      }
  }
  const int num_groups = (s.out_c + kTileChannels - 1) / kTileChannels;
  entry_begin_.assign(num_groups, 0);
  entry_end_.assign(num_groups, 0);
  a_offset_.clear();
  halves_.clear();
  std::vector<int8_t> tiles;
  int64_t products = 0;
  std::vector<int8_t> b(2 * 1024);
  for (int group = 0; group < num_groups; ++group) {
    entry_begin_[group] = static_cast<int32_t>(halves_.size());
    // A run: the taps dx = px, px + stride_w, ... of kernel row dy, adjacent in phase px.
    for (int dy = 0; dy < s.kernel_h; ++dy)
      for (int px = 0; px < s.stride_w && px < s.kernel_w; ++px) {
        const int run_taps = (s.kernel_w - px + s.stride_w - 1) / s.stride_w;
        const int64_t run_bytes = static_cast<int64_t>(run_taps) * c_in;
        const int64_t run_start =
            ((static_cast<int64_t>(dy % s.stride_h) * s.stride_w + px) * hq_ +
             dy / s.stride_h) * wq_ * c_in;
        for (int64_t chunk = 0; chunk * kChunkBytes < run_bytes; ++chunk) {
          std::fill(b.begin(), b.end(), 0);
          int halves = 0;
          for (int k = 0; k < kChunkBytes && chunk * kChunkBytes + k < run_bytes; ++k) {
            const int64_t rb = chunk * kChunkBytes + k;
            const int dx = px + static_cast<int>(rb / c_in) * s.stride_w;
            const int ic = static_cast<int>(rb % c_in);
            for (int r = 0; r < kTileChannels; ++r) {
              const int c = group * kTileChannels + r;
              if (c >= s.out_c) break;
              const int8_t w = dense[(static_cast<size_t>(c) * taps + dy * s.kernel_w + dx) *
                                     c_in + ic];
              if (w == 0) continue;
              b[(r / 16) * 1024 + (k / 4) * 64 + (r % 16) * 4 + k % 4] = w;
              halves |= 1 << (r / 16);
            }
          }
          if (halves == 0) continue;
          a_offset_.push_back(run_start + chunk * kChunkBytes);
          halves_.push_back(static_cast<uint8_t>(halves));
          tiles.insert(tiles.end(), b.begin(), b.end());
          products += 2 * ((halves & 1) + (halves >> 1));
        }
      }
    entry_end_[group] = static_cast<int32_t>(halves_.size());
  }
  // Signed inputs: no offset.
  std::vector<int64_t> weight_sum(num_groups * kTileChannels, 0);
  for (int c = 0; c < s.out_c; ++c)
    for (int k = 0; k < taps * c_in; ++k)
      weight_sum[c] += dense[static_cast<size_t>(c) * taps * c_in + k];
  SetChannels(weight_sum, 0);
  b_.assign(tiles.size() + kChunkBytes, 0);
  b_base_ = AlignToLine(b_.data());
  std::copy(tiles.begin(), tiles.end(), b_base_);
  tile_filter_.num_groups = num_groups;
  tile_filter_.a_stride = c_in;
  tile_filter_.entry_begin = entry_begin_.data();
  tile_filter_.entry_end = entry_end_.data();
  tile_filter_.a_offset = a_offset_.data();
  tile_filter_.halves = halves_.data();
  tile_filter_.b = b_base_;
  tile_filter_.bias = bias_corrected_.data();
  tile_filter_.requantization = &spmm_requantization_;
  return products;
}

void Qs8ConvPlan::SetChannels(const std::vector<int64_t>& weight_sum, int32_t input_offset) {
  const size_t channels = weight_sum.size();
  bias_corrected_.assign(channels, 0);
  // Channels past out_c (a last block's or group's padding): any valid requantization, never
  // stored.
  multiplier_.assign(channels, int32_t{1} << 30);
  shift_.assign(channels, 0);
  for (int c = 0; c < shape_.out_c; ++c) {
    bias_corrected_[c] = static_cast<int32_t>((bias_ != nullptr ? bias_[c] : 0) -
                                              (input_offset + int64_t{input_zero_point_}) *
                                                  weight_sum[c]);
    multiplier_[c] = requantization_.multiplier[c];
    shift_[c] = requantization_.shift[c];
  }
  spmm_requantization_ = requantization_;
  spmm_requantization_.multiplier = multiplier_.data();
  spmm_requantization_.shift = shift_.data();
}

void Qs8ConvPlan::InsideColumns(int iy, int px, int* lo, int* hi) const {
  const ConvShape& s = shape_;
  *lo = *hi = 0;
  const int last = s.in_w - 1 + s.pad_left - px;  // xq * stride_w <= last
  if (iy < 0 || iy >= s.in_h || last < 0) return;
  *lo = std::max(0, (s.pad_left - px + s.stride_w - 1) / s.stride_w);
  *hi = std::max(*lo, std::min(wq_, last / s.stride_w + 1));
}

void Qs8ConvPlan::PackPlanes(const int8_t* image, int row_begin, int row_end) {
  const ConvShape& s = shape_;
  const int c_in = s.in_c;
  const int8_t pad = static_cast<int8_t>(input_zero_point_);
  for (int y = row_begin; y < row_end; ++y) {  // padded rows: y = yq * stride_h + py
    const int yq = y / s.stride_h, py = y % s.stride_h;
    if (!PhaseRead(py, s.kernel_h, s.stride_h, 1)) continue;
    const int iy = y - s.pad_top;
    const int8_t* in_row = image + static_cast<int64_t>(iy) * s.in_w * c_in;
    for (int px = 0; px < s.stride_w; ++px) {
      if (!PhaseRead(px, s.kernel_w, s.stride_w, 1)) continue;
      int8_t* dst = planes_base_ + (static_cast<int64_t>(py) * s.stride_w + px) * plane_bytes_ +
                    static_cast<int64_t>(yq) * wq_ * c_in;
      int lo, hi;
      InsideColumns(iy, px, &lo, &hi);
      std::memset(dst, pad, static_cast<size_t>(lo) * c_in);
      std::memset(dst + static_cast<int64_t>(hi) * c_in, pad,
                  static_cast<size_t>(wq_ - hi) * c_in);
      if (hi == lo) continue;
      const int8_t* src = in_row + static_cast<int64_t>(lo * s.stride_w + px - s.pad_left) * c_in;
      if (s.stride_w == 1) {
        std::memcpy(dst + static_cast<int64_t>(lo) * c_in, src,
                    static_cast<size_t>(hi - lo) * c_in);
        continue;
      }
      for (int xq = lo; xq < hi; ++xq)
        std::memcpy(dst + static_cast<int64_t>(xq) * c_in,
                    src + static_cast<int64_t>(xq - lo) * s.stride_w * c_in, c_in);
    }
  }
}

void Qs8ConvPlan::RunTiles(const int8_t* input, int8_t* output, Parallel* parallel,
                           int workers) {
  const ConvShape& s = shape_;
  const int64_t image_in = static_cast<int64_t>(s.in_h) * s.in_w * s.in_c;
  const int64_t image_out = static_cast<int64_t>(s.out_h) * s.out_w * s.out_c;
  // Calls of at most kTileBlocksPerCall blocks, as even as they go and, where there are
  // enough blocks, a multiple of the workers (each worker takes a contiguous share of them).
  int calls = (num_position_blocks_ + kTileBlocksPerCall - 1) / kTileBlocksPerCall;
  if (tile_filter_.num_groups % workers != 0 && num_position_blocks_ >= workers)
    calls = (calls + workers - 1) / workers * workers;
  const int padded_rows = hq_ * s.stride_h;
  for (int n = 0; n < s.batch; ++n) {
    const int8_t* image = input + n * image_in;
    int8_t* out_image = output + n * image_out;
    const int pack_tasks =
        planes_.size() < 4 * kSerialPackWords ? 1 : std::min(padded_rows, workers);
    parallel->For(pack_tasks, workers, [&](int task, int) {
      PackPlanes(image, padded_rows * task / pack_tasks, padded_rows * (task + 1) / pack_tasks);
    });
    parallel->For(tile_filter_.num_groups * calls, workers, [&](int task, int worker) {
      const int group = task / calls, call = task % calls;
      const int block = static_cast<int>(static_cast<int64_t>(num_position_blocks_) * call / calls);
      const int blocks =
          static_cast<int>(static_cast<int64_t>(num_position_blocks_) * (call + 1) / calls) - block;
      if (blocks == 0) return;
      int8_t* y = block_out_.data() +
                  static_cast<size_t>(worker) * kTileBlocksPerCall * kTilePositions * kTileChannels;
      const int64_t q0 = static_cast<int64_t>(block) * kTilePositions;
      tile_microkernel_(tile_filter_, planes_base_ + q0 * s.in_c, group, blocks, y);
      const int c0 = group * kTileChannels, channels = std::min(kTileChannels, s.out_c - c0);
      // The block's positions, one output row's stretch at a time.
      int oy = static_cast<int>(q0 / wq_), ox = static_cast<int>(q0 % wq_);
      for (int i = 0; i < blocks * kTilePositions && oy < s.out_h;) {
        const int run = std::min(blocks * kTilePositions - i, wq_ - ox);
        const int stored = std::max(0, std::min(run, s.out_w - ox));
        const int8_t* src = y + i * kTileChannels;
        int8_t* dst = out_image + (static_cast<int64_t>(oy) * s.out_w + ox) * s.out_c + c0;
        if (channels == kTileChannels) {  // a constant size: plain moves, no libc call
          for (int p = 0; p < stored; ++p)
            std::memcpy(dst + p * s.out_c, src + p * kTileChannels, kTileChannels);
        } else {
          for (int p = 0; p < stored; ++p)
            std::memcpy(dst + p * s.out_c, src + p * kTileChannels, channels);
        }
        i += run;
        ox += run;
        if (ox == wq_) {
          ox = 0;
          ++oy;
        }
      }
    });
  }
}

void Qs8ConvPlan::BuildRows(const Qs8SparseFilter& filter, int rows, int channels) {
  const ConvShape& s = shape_;
  const int bs = filter.block_size;
  const int num_rows = channels / rows;
  // Which row each (nonzero block, channel of it) lands in, -1 for none: rows > 1 keeps the
  // blocks; otherwise each channel's nonzero words become its own row.
  auto row_of = [&](int32_t j, int r) {
    const int c = filter.row_block[j] * bs + r;
    if (rows > 1) return r == 0 ? static_cast<int>(filter.row_block[j]) : -1;
    if (c >= s.out_c) return -1;
    int32_t word;
    std::memcpy(&word, filter.values + (static_cast<size_t>(j) * bs + r) * 4, 4);
    return word != 0 ? c : -1;
  };
  row_begin_.assign(num_rows, 0);
  row_end_.assign(num_rows, 0);
  std::vector<int32_t> count(num_rows, 0);
  for (int32_t j = 0; j < filter.num_nonzero_blocks; ++j)
    for (int r = 0; r < bs; ++r)
      if (const int row = row_of(j, r); row >= 0) ++count[row];
  for (int b = 1; b < num_rows; ++b) row_begin_[b] = row_begin_[b - 1] + count[b - 1];
  const int64_t entries = num_rows > 0 ? row_begin_[num_rows - 1] + count[num_rows - 1] : 0;
  offset_.assign(entries, 0);
  values_.assign(entries * rows, 0);
  std::vector<int64_t> weight_sum(channels, 0);
  row_end_ = row_begin_;
  for (int col = 0; col < filter.num_cols; ++col) {
    const int tap = col / groups_, g = col % groups_;
    const int dy = (tap / s.kernel_w) * s.dilation_h, dx = (tap % s.kernel_w) * s.dilation_w;
    const int64_t offset =
        ((static_cast<int64_t>(g) * s.stride_h + dy % s.stride_h) * s.stride_w +
         dx % s.stride_w) * plane_ + static_cast<int64_t>(dy / s.stride_h) * wq_ +
        dx / s.stride_w;
    for (int32_t j = filter.col_ptr[col]; j < filter.col_ptr[col + 1]; ++j)
      for (int r = 0; r < bs; ++r) {
        const int row = row_of(j, r);
        if (row < 0) continue;
        const int32_t e = row_end_[row]++;
        offset_[e] = static_cast<int32_t>(offset);
        // rows > 1: the block's words in order (bs == rows); else the channel's word.
        for (int k = 0; k < rows; ++k) {
          const int8_t* w = filter.values + (static_cast<size_t>(j) * bs + (rows > 1 ? k : r)) * 4;
          std::memcpy(&values_[static_cast<size_t>(e) * rows + k], w, 4);
          weight_sum[rows > 1 ? row * rows + k : row] += w[0] + w[1] + w[2] + w[3];
        }
      }
  }
  SetChannels(weight_sum, input_offset_);
  spmm_.num_channels = channels;
  spmm_.block_rows = rows;
  spmm_.row_begin = row_begin_.data();
  spmm_.row_end = row_end_.data();
  spmm_.offset = offset_.data();
  spmm_.values = values_.data();
  spmm_.bias = bias_corrected_.data();
  spmm_.requantization = &spmm_requantization_;
}

void Qs8ConvPlan::Pack(const int8_t* image, int row_begin, int row_end, int worker) {
  const ConvShape& s = shape_;
  const uint32_t pad_word = static_cast<uint8_t>(input_zero_point_ + input_offset_) * 0x01010101u;
  const uint32_t flip = input_offset_ != 0 ? 0x80808080u : 0u;  // int8 -> uint8 (x + 128)
  const int64_t group_stride = plane_ * s.stride_h * s.stride_w;
  // Whole words of 4 channels per pixel: the variant's 32-bit transpose moves them (it moves
  // bits only; the words are no floats). Otherwise, word by word.
  const bool words = s.in_c % 4 == 0 && transpose_ != nullptr;
  uint32_t* row_buffer = row_buffer_.data() + static_cast<size_t>(worker) * s.in_w * groups_;
  for (int y = row_begin; y < row_end; ++y) {  // padded rows: y = yq * stride_h + py
    const int yq = y / s.stride_h, py = y % s.stride_h;
    if (!PhaseRead(py, s.kernel_h, s.stride_h, s.dilation_h)) continue;
    const int iy = y - s.pad_top;
    const int8_t* in_row = image + static_cast<int64_t>(iy) * s.in_w * s.in_c;
    if (words && iy >= 0 && iy < s.in_h) {
      // in_c % 4 == 0: the row is whole words.
      const int64_t n = static_cast<int64_t>(s.in_w) * s.in_c / 4;
      CopyFlipWords(in_row, n, flip, row_buffer);
    }
    for (int px = 0; px < s.stride_w; ++px) {
      if (!PhaseRead(px, s.kernel_w, s.stride_w, s.dilation_w)) continue;
      uint32_t* dst = x_base_ + (static_cast<int64_t>(py) * s.stride_w + px) * plane_ +
                      static_cast<int64_t>(yq) * wq_;
      int lo, hi;
      InsideColumns(iy, px, &lo, &hi);
      for (int g = 0; g < groups_; ++g) {
        uint32_t* row = dst + g * group_stride;
        std::fill(row, row + lo, pad_word);
        std::fill(row + hi, row + wq_, pad_word);
      }
      if (hi == lo) continue;
      const int first_ix = lo * s.stride_w + px - s.pad_left;
      if (words) {
        transpose_(reinterpret_cast<const float*>(row_buffer + first_ix * groups_),
                   static_cast<int64_t>(s.stride_w) * groups_, hi - lo, groups_, nullptr,
                   reinterpret_cast<float*>(dst + lo), group_stride);
        continue;
      }
      // Channels past in_c are padding; they meet zero weights.
      const int8_t* src = in_row + static_cast<int64_t>(first_ix) * s.in_c;
      const int64_t step = static_cast<int64_t>(s.stride_w) * s.in_c;
      for (int g = 0; g < groups_; ++g) {
        uint32_t* row = dst + g * group_stride + lo;
        switch (std::min(4, s.in_c - 4 * g)) {
          case 1: PackWords<1>(src + 4 * g, step, hi - lo, pad_word, flip, row); break;
          case 2: PackWords<2>(src + 4 * g, step, hi - lo, pad_word, flip, row); break;
          case 3: PackWords<3>(src + 4 * g, step, hi - lo, pad_word, flip, row); break;
          default: PackWords<4>(src + 4 * g, step, hi - lo, pad_word, flip, row);
        }
      }
    }
  }
}

void Qs8ConvPlan::Run(const int8_t* input, int8_t* output, Parallel* parallel, int workers) {
  workers = std::max(1, std::min(workers, max_workers_));
  if (tile_microkernel_ != nullptr) {
    RunTiles(input, output, parallel, workers);
    return;
  }
  if (tile_ > 0) {
    const ConvShape& s = shape_;
    const int64_t image_in = static_cast<int64_t>(s.in_h) * s.in_w * s.in_c;
    const int64_t image_out = static_cast<int64_t>(s.out_h) * s.out_w * s.out_c;
    for (int n = 0; n < s.batch; ++n) {
      const int8_t* image = input + n * image_in;
      int8_t* out_image = output + n * image_out;
      const int padded_rows = hq_ * s.stride_h;
      // A small image is packed by the caller alone: a second worker's wake-up would cost
      // more than it saves.
      const int pack_tasks = x_.size() < kSerialPackWords ? 1 : std::min(padded_rows, workers);
      parallel->For(pack_tasks, workers, [&](int task, int worker) {
        Pack(image, padded_rows * task / pack_tasks, padded_rows * (task + 1) / pack_tasks,
             worker);
      });
      parallel->For(num_tiles_, workers, [&](int t, int worker) {
        int8_t* y = tile_out_.data() + static_cast<size_t>(worker) * tile_out_stride_;
        const int q0 = t * tile_;
        microkernel_(spmm_, x_base_ + q0, y);
        // The tile's positions, one output row's stretch at a time.
        for (int i = 0; i < tile_;) {
          const int q = q0 + i, oy = q / wq_, ox = q % wq_;
          if (oy >= s.out_h) break;
          const int run = std::min(tile_ - i, wq_ - ox);
          if (ox < s.out_w)
            transpose_bytes_(y + i, tile_, s.out_c, std::min(run, s.out_w - ox),
                           out_image + (static_cast<int64_t>(oy) * s.out_w + ox) * s.out_c,
                           s.out_c);
          i += run;
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
