// The int8 (qs8) family: the driver (Qs8ConvPlan) with a portable microkernel and every
// variant's own microkernel, bit-exact with the int8 reference on random layers; the reference
// against a dense int8 convolution written here from TFLite's definition.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tflite_ops/kernels/conv_plan.h"
#include "tflite_ops/kernels/geometry.h"
#include "tflite_ops/kernels/qs8_conv_plan.h"
#include "tflite_ops/kernels/sparse_conv.h"
#include "tflite_ops/tests/random_geometry.h"

namespace hybrid_sparse {
namespace {

int NumCases() {  // under qemu the runner sets KERNEL_TEST_CASES lower
  const char* env = std::getenv("KERNEL_TEST_CASES");
  return env != nullptr ? std::atoi(env) : 300;
}

struct Layer {
  ConvShape shape;
  Padding padding = Padding::kSame;
  std::vector<int8_t> input, dense;  // dense: [out_c][kh][kw][in_c]
  std::vector<int32_t> bias, multiplier, shift;
  int32_t input_zero_point = 0;
  Qs8Requantization requantization;
  // The qs8 format (sparse_conv.h).
  int block_size = 1;
  std::vector<int32_t> col_ptr;
  std::vector<int16_t> row_block;
  std::vector<int8_t> values;
  Qs8SparseFilter filter;

  std::string Describe() const {
    const ConvShape& s = shape;
    return std::to_string(s.batch) + "x" + std::to_string(s.in_h) + "x" + std::to_string(s.in_w) +
           "x" + std::to_string(s.in_c) + " -> " + std::to_string(s.out_c) + " k" +
           std::to_string(s.kernel_h) + "x" + std::to_string(s.kernel_w) + " s" +
           std::to_string(s.stride_h) + "x" + std::to_string(s.stride_w) + " d" +
           std::to_string(s.dilation_h) + "x" + std::to_string(s.dilation_w) +
           (padding == Padding::kSame ? " SAME" : " VALID") + " block " +
           std::to_string(block_size) + " zp " +
           std::to_string(input_zero_point) + " rounding " +
           std::to_string(static_cast<int>(requantization.rounding));
  }
};

// block_size 0: drawn from 1, 2 and 4 (blocks of kQs8BlockRows run on block kernels, others
// row by row).
Layer RandomLayer(std::mt19937* rng, int block_size = 0) {
  auto uniform = [rng](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(*rng); };
  Layer l;
  static const int kBlockSizes[] = {1, 2, geometry::kQs8BlockRows, geometry::kQs8BlockRows};
  l.block_size = block_size > 0 ? block_size : kBlockSizes[uniform(0, 3)];
  const int bs = l.block_size;
  ConvShape& s = l.shape;
  // Widths from 1 (every edge case of the packing) past 16 (the byte transpose's blocks).
  s = testing::RandomGeometry(rng, {24, 40, 40, 3, 3, 2}, &l.padding);
  const double sparsity = std::uniform_real_distribution<double>(0.0, 0.95)(*rng);
  std::bernoulli_distribution zero(sparsity), zero_group(sparsity / 2);
  // A third of the layers have small weights, inputs and biases, and multipliers above 1 as
  // well as below (shift > 0: the requantization's left shift): their results land inside
  // int8 instead of saturating, so every step of the requantization shows.
  const bool small = uniform(0, 2) == 0;
  const int w_max = small ? 2 : 127, x_max = small ? 3 : 127, b_max = small ? 100 : 30000;
  l.dense.resize(static_cast<size_t>(s.out_c) * s.kernel_h * s.kernel_w * s.in_c);
  for (auto& w : l.dense) w = zero(*rng) ? 0 : static_cast<int8_t>(uniform(-w_max, w_max));
  // Whole groups of 4 input channels of a tap and a block of output channels too, as int8
  // pruning leaves them.
  const size_t patch = static_cast<size_t>(s.kernel_h) * s.kernel_w * s.in_c;
  for (int c0 = 0; c0 < s.out_c; c0 += bs)
    for (size_t k = 0; k < patch; k += s.in_c)
      for (int g = 0; g < s.in_c; g += 4)
        if (zero_group(*rng))
          for (int c = c0; c < c0 + bs && c < s.out_c; ++c)
            for (int t = g; t < g + 4 && t < s.in_c; ++t) l.dense[c * patch + k + t] = 0;
  l.input.resize(static_cast<size_t>(s.batch) * s.in_h * s.in_w * s.in_c);
  for (auto& x : l.input) x = static_cast<int8_t>(uniform(-x_max - 1, x_max));
  l.input_zero_point = uniform(-x_max - 1, x_max);
  l.bias.resize(s.out_c);
  for (auto& b : l.bias) b = uniform(-b_max, b_max);
  l.requantization.rounding = uniform(0, 1) ? Rounding::kSingle : Rounding::kDouble;
  l.multiplier.resize(s.out_c);
  l.shift.resize(s.out_c);
  // Some layers with tiny multipliers (shifts past 23: the kernels' one-floor form cannot
  // hold the zero point beside the product there).
  const double lowest = uniform(0, 5) == 0 ? -21.0 : -12.0;
  for (int c = 0; c < s.out_c; ++c) {
    const double real = std::exp(small ? std::uniform_real_distribution<double>(-2.0, 2.0)(*rng)
                                       : std::uniform_real_distribution<double>(lowest, 0.0)(*rng));
    QuantizeMultiplier(real, l.requantization.rounding, &l.multiplier[c], &l.shift[c]);
  }
  l.requantization.multiplier = l.multiplier.data();
  l.requantization.shift = l.shift.data();
  l.requantization.output_zero_point = uniform(-128, 127);
  l.requantization.min = uniform(0, 1) ? -128 : std::max(-128, l.requantization.output_zero_point);
  // Sometimes a ReLU6-like upper bound: kernels that saturate when the clamp is int8's own
  // range must still clamp below 127.
  l.requantization.max = uniform(0, 2) == 0 ? std::max(l.requantization.min, uniform(0, 126)) : 127;

  // Column-compressed by groups of 4 input channels of a tap, in blocks of bs channels.
  const int groups = (s.in_c + 3) / 4;
  const int cols = s.kernel_h * s.kernel_w * groups;
  const int num_blocks = (s.out_c + bs - 1) / bs;
  l.col_ptr.assign(cols + 1, 0);
  for (int col = 0; col < cols; ++col) {
    const int tap = col / groups, g = col % groups;
    for (int b = 0; b < num_blocks; ++b) {
      std::vector<int8_t> words(static_cast<size_t>(bs) * 4, 0);
      bool any = false;
      for (int r = 0; r < bs && b * bs + r < s.out_c; ++r)
        for (int t = 0; t < 4 && 4 * g + t < s.in_c; ++t) {
          words[4 * r + t] = l.dense[(static_cast<size_t>(b * bs + r) * s.kernel_h * s.kernel_w +
                                      tap) * s.in_c + 4 * g + t];
          any |= words[4 * r + t] != 0;
        }
      if (!any) continue;
      l.row_block.push_back(static_cast<int16_t>(b));
      l.values.insert(l.values.end(), words.begin(), words.end());
    }
    l.col_ptr[col + 1] = static_cast<int32_t>(l.row_block.size());
  }
  static const int16_t kNoIndex = 0;
  static const int8_t kNoValue = 0;
  Qs8SparseFilter& f = l.filter;
  f.out_c = s.out_c;
  f.num_cols = cols;
  f.block_size = bs;
  f.num_blocks = num_blocks;
  f.num_nonzero_blocks = static_cast<int>(l.row_block.size());
  f.col_ptr = l.col_ptr.data();
  f.row_block = l.row_block.empty() ? &kNoIndex : l.row_block.data();
  f.values = l.values.empty() ? &kNoValue : l.values.data();
  return l;
}

// TFLite's int8 CONV_2D, written from its definition over the dense filter.
std::vector<int8_t> DenseConv(const Layer& l) {
  const ConvShape& s = l.shape;
  std::vector<int8_t> out(static_cast<size_t>(s.batch) * s.out_h * s.out_w * s.out_c);
  for (int n = 0; n < s.batch; ++n)
    for (int oy = 0; oy < s.out_h; ++oy)
      for (int ox = 0; ox < s.out_w; ++ox)
        for (int c = 0; c < s.out_c; ++c) {
          int32_t acc = l.bias[c];
          for (int ky = 0; ky < s.kernel_h; ++ky)
            for (int kx = 0; kx < s.kernel_w; ++kx) {
              const int iy = oy * s.stride_h - s.pad_top + ky * s.dilation_h;
              const int ix = ox * s.stride_w - s.pad_left + kx * s.dilation_w;
              if (iy < 0 || iy >= s.in_h || ix < 0 || ix >= s.in_w) continue;
              for (int ic = 0; ic < s.in_c; ++ic)
                acc += l.dense[((static_cast<size_t>(c) * s.kernel_h + ky) * s.kernel_w + kx) *
                                   s.in_c + ic] *
                       (l.input[((static_cast<size_t>(n) * s.in_h + iy) * s.in_w + ix) * s.in_c +
                                ic] - l.input_zero_point);
            }
          out[((static_cast<size_t>(n) * s.out_h + oy) * s.out_w + ox) * s.out_c + c] =
              Requantize(acc, c, l.requantization);
        }
  return out;
}

// max_workers > 1 splits small images' output channels into chunks (one task each).
std::vector<int8_t> RunPlan(const Layer& l, const KernelVariant& variant, int* tile,
                            int max_workers = 1) {
  Qs8ConvPlan plan;
  const std::string error = plan.Build(l.shape, l.filter, l.bias.data(), l.input_zero_point,
                                       l.requantization, variant, max_workers);
  EXPECT_EQ(error, "");
  *tile = plan.tile();
  const ConvShape& s = l.shape;
  std::vector<int8_t> out(static_cast<size_t>(s.batch) * s.out_h * s.out_w * s.out_c, 99);
  SerialParallel serial;
  plan.Run(l.input.data(), out.data(), &serial, 1);
  return out;
}

// The portable microkernel (Qs8SpmmReference) at a 64-position tile, so that the driver's
// packing, offsets and layout changes run on every CPU.
template <bool kUnsigned>
void PortableQs8(const Qs8SpmmFilter& f, const uint32_t* x, int8_t* y) {
  Qs8SpmmReference(f, x, y, 64, kUnsigned);
}

TEST(Qs8Reference, MatchesTheDenseDefinition) {
  std::mt19937 rng(19);
  for (int i = 0; i < NumCases(); ++i) {
    const Layer l = RandomLayer(&rng);
    ASSERT_EQ(ValidateSparseFilter(l.filter), "") << l.Describe();
    const ConvShape& s = l.shape;
    std::vector<int8_t> out(static_cast<size_t>(s.batch) * s.out_h * s.out_w * s.out_c);
    std::vector<int32_t> scratch(static_cast<size_t>(l.filter.num_blocks) * l.block_size);
    Qs8ConvArgs args{&l.shape, &l.filter, l.input.data(), l.input_zero_point, l.bias.data(),
                     &l.requantization, out.data(), scratch.data()};
    Qs8SparseConvRowsReference(args, 0, s.batch * s.out_h);
    ASSERT_EQ(out, DenseConv(l)) << l.Describe();
  }
}

TEST(Qs8Driver, PackedPathWithThePortableMicrokernelIsBitExact) {
  // Both packings: the words as int8 and as uint8 (x + 128, the bias corrected for it).
  for (const bool unsigned_input : {false, true}) {
    Qs8Kernels portable;
    portable.name = "portable";
    portable.tilings[0] = {64, unsigned_input ? PortableQs8<true> : PortableQs8<false>};
    portable.lanes = 16;
    portable.unsigned_input = unsigned_input;
    KernelVariant variant{"portable-qs8", TransposeReference};
    variant.qs8 = &portable;
    std::mt19937 rng(20);
    for (int i = 0; i < NumCases(); ++i) {
      const Layer l = RandomLayer(&rng);
      const int max_workers = 1 + i % 4;
      int tile = 0;
      const std::vector<int8_t> got = RunPlan(l, variant, &tile, max_workers);
      ASSERT_EQ(tile, 64);
      ASSERT_EQ(got, DenseConv(l)) << "unsigned " << unsigned_input << ", " << max_workers
                                   << " workers: " << l.Describe();
    }
  }
}

// A tile microkernel alone (no vector tilings: the plan takes the tiles for every undilated
// layer), on random layers whose groups of channels and chunks are partly empty; two workers
// where max_workers allows (each its own block of results).
void ExpectTilePathBitExact(const char* name, Qs8TileMicrokernelFn microkernel) {
  Qs8Kernels tiles_only;
  tiles_only.name = name;
  tiles_only.tile_microkernel = microkernel;
  KernelVariant variant{name, TransposeReference};
  variant.qs8 = &tiles_only;
  std::mt19937 rng(24);
  for (int i = 0; i < NumCases(); ++i) {
    const Layer l = RandomLayer(&rng);
    Qs8ConvPlan plan;
    const int workers = 1 + i % 2;
    ASSERT_EQ(plan.Build(l.shape, l.filter, l.bias.data(), l.input_zero_point,
                         l.requantization, variant, workers), "");
    ASSERT_EQ(plan.tiles(), l.shape.dilation_h == 1 && l.shape.dilation_w == 1)
        << l.Describe();
    const ConvShape& s = l.shape;
    std::vector<int8_t> got(static_cast<size_t>(s.batch) * s.out_h * s.out_w * s.out_c, 99);
    SerialParallel serial;
    plan.Run(l.input.data(), got.data(), &serial, workers);
    ASSERT_EQ(got, DenseConv(l)) << name << " tiles: " << l.Describe();
  }
}

TEST(Qs8Driver, TilePathWithThePortableTileKernelIsBitExact) {
  ExpectTilePathBitExact("portable tiles", Qs8TileReference);
}

#ifndef QS8_DRIVER_ONLY
TEST(Qs8Families, MatrixTilesAreBitExact) {
  int count = 0, tested = 0;
  const Qs8Kernels* const* all = AvailableQs8Kernels(&count);
  for (int k = 0; k < count; ++k) {
    if (all[k]->tile_microkernel == nullptr) continue;
    ++tested;
    ExpectTilePathBitExact(all[k]->name, all[k]->tile_microkernel);
  }
  if (tested == 0) GTEST_SKIP() << "no family with matrix tiles on this CPU";
}

// Every family this CPU runs (not only each variant's best: the ARMv8.0 kernel under a qemu
// with dotprod, the P kernel's portable twin), every tiling alone (the plan's choice would
// leave some unreached by small random layers), then with the plan choosing.
TEST(Qs8Families, EveryTilingOfEveryFamilyIsBitExact) {
  int count = 0;
  const Qs8Kernels* const* all = AvailableQs8Kernels(&count);
  ASSERT_GT(count, 0);
  for (int k = 0; k < count; ++k) {
    const Qs8Kernels& family = *all[k];
    std::printf("qs8 family %s\n", family.name);
    // Row tilings on filters of block_size 1 and 2 (4 too where the family has no block
    // kernel), block tilings on blocks of kQs8BlockRows.
    for (const bool blocks : {false, true}) {
      const Qs8Tiling* tilings = blocks ? family.block_tilings : family.tilings;
      if (blocks && tilings[0].tile == 0) continue;
      for (int t = 0; t < kMaxQs8Tilings; ++t) {
        if (tilings[t].tile == 0) continue;
        Qs8Kernels one = family;
        for (int u = 0; u < kMaxQs8Tilings; ++u) {
          one.tilings[u] = u == 0 && !blocks ? tilings[t] : Qs8Tiling{};
          one.block_tilings[u] = u == 0 && blocks ? tilings[t] : Qs8Tiling{};
        }
        if (blocks) one.tilings[0] = family.tilings[0];
        one.tile_microkernel = nullptr;  // the tile path is tested on its own below
        KernelVariant variant{family.name, TransposeReference};
        variant.qs8 = &one;
        std::mt19937 rng(22 + t + 50 * blocks);
        for (int i = 0; i < NumCases() / 4; ++i) {
          const int bs = blocks ? geometry::kQs8BlockRows
                                : (family.block_tilings[0].tile != 0 ? 1 + i % 2 : 0);
          const Layer l = RandomLayer(&rng, bs);
          int tile = 0;
          const std::vector<int8_t> got = RunPlan(l, variant, &tile);
          ASSERT_EQ(tile, tilings[t].tile);
          ASSERT_EQ(got, DenseConv(l)) << family.name << (blocks ? " block" : "") << " tile "
                                       << tile << ": " << l.Describe();
        }
      }
    }
  }
}

// The families' tilings are the geometry the plugin exports to the analytic model.
TEST(Qs8Families, TilesAreTheExportedGeometry) {
  int count = 0;
  const Qs8Kernels* const* all = AvailableQs8Kernels(&count);
  for (int k = 0; k < count; ++k) {
    const Qs8Kernels& family = *all[k];
    const geometry::Qs8* g = nullptr;
    for (const geometry::Qs8* candidate :
         {&geometry::kQs8Avx512Vnni, &geometry::kQs8Avx2, &geometry::kQs8Neon,
          &geometry::kQs8NeonDot, &geometry::kQs8RiscvP})
      if (std::string(candidate->name) == family.name) g = candidate;
    if (std::string(family.name) == "packed-twin") g = &geometry::kQs8RiscvP;
    if (g == nullptr) continue;  // RVV: its tile follows VLEN
    EXPECT_EQ(family.lanes, g->lanes) << family.name;
    for (int t = 0; t < kMaxQs8Tilings; ++t) {
      EXPECT_EQ(family.tilings[t].tile, t < geometry::kMaxQs8Tiles ? g->tiles[t] : 0)
          << family.name << " tiling " << t;
      EXPECT_EQ(family.block_tilings[t].tile, t < geometry::kMaxQs8Tiles ? g->block_tiles[t] : 0)
          << family.name << " block tiling " << t;
    }
  }
}

TEST(Qs8Variants, EveryVariantsInt8PathIsBitExact) {
  int count = 0;
  const KernelVariant* all = AvailableKernels(&count);
  int tested = 0;
  for (int k = 0; k < count; ++k) {
    if (all[k].qs8 == nullptr) continue;
    ++tested;
    std::mt19937 rng(21);
    for (int i = 0; i < NumCases(); ++i) {
      const Layer l = RandomLayer(&rng);
      int tile = 0;
      const std::vector<int8_t> got = RunPlan(l, all[k], &tile, 1 + i % 3);
      ASSERT_GT(tile, 0);
      ASSERT_EQ(got, DenseConv(l)) << all[k].name << " (" << all[k].qs8->name << ") tile "
                                   << tile << ": " << l.Describe();
    }
  }
  if (tested == 0) GTEST_SKIP() << "no variant with an int8 microkernel on this CPU";
}

// The vector requantizations round in 32 bits, which holds while the accumulator stays clear
// of 2^31 by half the right shift's divisor: a layer that could come closer runs the reference,
// bit-exact still.
TEST(Qs8Variants, AccumulatorsNearTheInt32LimitRunTheReference) {
  int count = 0;
  const KernelVariant* all = AvailableKernels(&count);
  std::mt19937 rng(8);
  Layer l = RandomLayer(&rng);
  l.requantization.rounding = Rounding::kDouble;
  for (int c = 0; c < l.shape.out_c; ++c) {
    l.bias[c] = (1 << 30) + (1 << 29);
    l.shift[c] = -31;
  }
  for (int k = 0; k < count; ++k) {
    if (all[k].qs8 == nullptr) continue;
    int tile = -1;
    EXPECT_EQ(RunPlan(l, all[k], &tile, 1), DenseConv(l)) << all[k].name << ": " << l.Describe();
    EXPECT_EQ(tile, 0) << all[k].name;
  }
}

#if defined(__riscv)
// The P kernel cannot run here (no P in qemu); it is built and linked, and its machine code
// holds pm4adda.b as the P draft encodes it (R-type, opcode 0x3b, funct3 5, funct7 0x46).
TEST(Qs8RiscvP, KernelHoldsPm4AddaB) {
  for (int t = 0; t < kMaxQs8Tilings; ++t) {
    if (kQs8RiscvP.tilings[t].tile == 0) continue;
    const auto* code = reinterpret_cast<const unsigned char*>(kQs8RiscvP.tilings[t].microkernel);
    bool found = false;
    for (int i = 0; i < 4096 && !found; i += 2) {  // compressed instructions: 2-byte steps
      uint32_t word;
      std::memcpy(&word, code + i, 4);
      found = (word & 0xfe00707fu) == 0x8c00503bu;
    }
    EXPECT_TRUE(found) << "tile " << kQs8RiscvP.tilings[t].tile;
  }
}
#endif

// The families' byte transposes against the portable loop, on every block edge, with rows
// packed tight (the edge loads read into the next row) and NHWC tight (a channel edge must not
// write into the next position's channels).
TEST(Qs8Families, ByteTransposesMoveEveryByte) {
  int count = 0;
  const Qs8Kernels* const* all = AvailableQs8Kernels(&count);
  std::mt19937 rng(23);
  for (int k = 0; k < count; ++k) {
    if (all[k]->transpose == nullptr) continue;
    for (int rows : {1, 15, 16, 17, 40})
      for (int cols : {1, 15, 16, 17, 31, 32, 33, 48, 49, 63, 64, 65, 97, 130})
        for (int pad : {0, 3}) {
          const int src_stride = cols + pad, dst_stride = rows + 2 * pad;
          std::vector<int8_t> src(static_cast<size_t>(rows) * src_stride + kQs8TransposeSlack);
          for (auto& v : src) v = static_cast<int8_t>(rng());
          std::vector<int8_t> got(static_cast<size_t>(cols) * dst_stride, 7), want = got;
          all[k]->transpose(src.data(), src_stride, rows, cols, got.data(), dst_stride);
          for (int p = 0; p < cols; ++p)
            for (int c = 0; c < rows; ++c) want[p * dst_stride + c] = src[c * src_stride + p];
          ASSERT_EQ(got, want) << all[k]->name << " " << rows << "x" << cols << " pad " << pad;
        }
  }
}
#endif

}  // namespace
}  // namespace hybrid_sparse
