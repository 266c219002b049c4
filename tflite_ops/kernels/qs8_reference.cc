// Portable reference of the qs8 (int8) family: TFLite's requantization, and the definition of
// the int8 op that every int8 variant is tested against.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "tflite_ops/kernels/geometry.h"
#include "tflite_ops/kernels/sparse_conv.h"

namespace hybrid_sparse {
namespace {

int32_t SaturatingRoundingDoublingHighMul(int32_t a, int32_t b) {
  if (a == b && a == std::numeric_limits<int32_t>::min())
    return std::numeric_limits<int32_t>::max();
  const int64_t ab = static_cast<int64_t>(a) * b;
  const int64_t nudge = ab >= 0 ? (int64_t{1} << 30) : (1 - (int64_t{1} << 30));
  return static_cast<int32_t>((ab + nudge) / (int64_t{1} << 31));  // truncates towards zero
}

int32_t RoundingDivideByPOT(int32_t x, int exponent) {
  const int32_t mask = static_cast<int32_t>((int64_t{1} << exponent) - 1);
  const int32_t remainder = x & mask;
  const int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
  return (x >> exponent) + (remainder > threshold ? 1 : 0);
}

}  // namespace

void QuantizeMultiplier(double real, Rounding rounding, int32_t* multiplier, int32_t* shift) {
  if (real == 0.0) {
    *multiplier = 0;
    *shift = 0;
    return;
  }
  int exponent = 0;
  const double q = std::frexp(real, &exponent);
  int64_t fixed = static_cast<int64_t>(std::round(q * static_cast<double>(int64_t{1} << 31)));
  if (fixed == (int64_t{1} << 31)) {
    fixed /= 2;
    ++exponent;
  }
  if (exponent < -31) {
    exponent = 0;
    fixed = 0;
  }
  if (rounding == Rounding::kSingle && exponent > 30) {
    exponent = 30;
    fixed = (int64_t{1} << 31) - 1;
  }
  *multiplier = static_cast<int32_t>(fixed);
  *shift = exponent;
}

int32_t MultiplyByQuantizedMultiplier(int32_t x, int32_t multiplier, int32_t shift,
                                      Rounding rounding) {
  if (rounding == Rounding::kSingle) {
    const int total_shift = 31 - shift;
    const int64_t round = int64_t{1} << (total_shift - 1);
    return static_cast<int32_t>((static_cast<int64_t>(x) * multiplier + round) >> total_shift);
  }
  const int left = shift > 0 ? shift : 0;
  const int right = shift > 0 ? 0 : -shift;
  return RoundingDivideByPOT(
      SaturatingRoundingDoublingHighMul(static_cast<int32_t>(static_cast<uint32_t>(x) << left),
                                        multiplier),
      right);
}

void Qs8SparseConvRowsReference(const Qs8ConvArgs& a, int row_begin, int row_end) {
  const ConvShape& s = *a.shape;
  const Qs8SparseFilter& f = *a.filter;
  const Qs8Requantization& q = *a.requantization;
  const int bs = f.block_size;
  const int groups = (s.in_c + 3) / 4;
  int32_t* acc = a.scratch;
  for (int row = row_begin; row < row_end; ++row) {
    const int n = row / s.out_h;
    const int oy = row % s.out_h;
    const int8_t* in_image = a.input + static_cast<size_t>(n) * s.in_h * s.in_w * s.in_c;
    for (int ox = 0; ox < s.out_w; ++ox) {
      std::memset(acc, 0, sizeof(int32_t) * f.num_blocks * bs);
      for (int ky = 0; ky < s.kernel_h; ++ky) {
        const int iy = oy * s.stride_h - s.pad_top + ky * s.dilation_h;
        if (iy < 0 || iy >= s.in_h) continue;  // padding is the real zero: no contribution
        for (int kx = 0; kx < s.kernel_w; ++kx) {
          const int ix = ox * s.stride_w - s.pad_left + kx * s.dilation_w;
          if (ix < 0 || ix >= s.in_w) continue;
          const int8_t* px = in_image + (static_cast<size_t>(iy) * s.in_w + ix) * s.in_c;
          const int col0 = (ky * s.kernel_w + kx) * groups;
          for (int g = 0; g < groups; ++g) {
            int32_t x[4] = {0, 0, 0, 0};
            for (int t = 0; t < 4 && 4 * g + t < s.in_c; ++t)
              x[t] = px[4 * g + t] - a.input_zero_point;
            const int col = col0 + g;
            for (int32_t j = f.col_ptr[col]; j < f.col_ptr[col + 1]; ++j) {
              int32_t* dst = acc + f.row_block[j] * bs;
              const int8_t* w = f.values + static_cast<size_t>(j) * bs * 4;
              for (int r = 0; r < bs; ++r)
                dst[r] += w[4 * r] * x[0] + w[4 * r + 1] * x[1] + w[4 * r + 2] * x[2] +
                          w[4 * r + 3] * x[3];
            }
          }
        }
      }
      int8_t* out = a.output + ((static_cast<size_t>(n) * s.out_h + oy) * s.out_w + ox) * s.out_c;
      for (int c = 0; c < s.out_c; ++c)
        out[c] = Requantize(acc[c] + (a.bias != nullptr ? a.bias[c] : 0), c, q);
    }
  }
}

void Qs8SpmmReference(const Qs8SpmmFilter& f, const uint32_t* x, int8_t* y, int tile,
                      bool unsigned_input) {
  const int rows = f.block_rows;
  for (int c = 0; c < f.num_channels; ++c) {
    const int b = c / rows, r = c % rows;
    if (f.row_begin[b] == f.row_end[b]) continue;  // a constant the plan wrote
    for (int i = 0; i < tile; ++i) {
      int32_t acc = f.bias[c];
      for (int32_t j = f.row_begin[b]; j < f.row_end[b]; ++j) {
        const uint32_t in = x[f.offset[j] + i];
        const uint32_t w = static_cast<uint32_t>(f.values[static_cast<size_t>(j) * rows + r]);
        for (int t = 0; t < 4; ++t)
          acc += (unsigned_input ? static_cast<int32_t>((in >> (8 * t)) & 0xff)
                                 : static_cast<int8_t>((in >> (8 * t)) & 0xff)) *
                 static_cast<int8_t>((w >> (8 * t)) & 0xff);
      }
      y[c * tile + i] = Requantize(acc, c, *f.requantization);
    }
  }
}

// The tile microkernel's definition, reading exactly the bytes the tile loads read.
void Qs8TileReference(const Qs8TileFilter& f, const int8_t* a, int group, int num_blocks,
                      int8_t* y) {
  constexpr int kPositions = geometry::kQs8Amx.positions, kChannels = geometry::kQs8Amx.channels;
  constexpr int kChunk = geometry::kQs8Amx.chunk_bytes;
  const Qs8Requantization& q = *f.requantization;
  for (int i = 0; i < num_blocks * kPositions; ++i)
    for (int r = 0; r < kChannels; ++r) {
      const int c = group * kChannels + r, h = r / 16;
      int32_t acc = f.bias[c];
      for (int32_t e = f.entry_begin[group]; e < f.entry_end[group]; ++e) {
        const int8_t* row = a + i * f.a_stride + f.a_offset[e];
        const int8_t* b = f.b + (static_cast<size_t>(e) * 2 + h) * 1024 + (r % 16) * 4;
        int32_t sum = 0;
        for (int k = 0; k < kChunk; ++k) sum += row[k] * b[(k / 4) * 64 + k % 4];
        if (f.halves[e] >> h & 1) acc += sum;
      }
      y[i * kChannels + r] = Requantize(acc, c, q);
    }
}

}  // namespace hybrid_sparse
