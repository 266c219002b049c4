// Every kernel variant this build and CPU have, against the dense direct convolution of the
// shared tester, on random shapes, strides, dilations, paddings, block sizes, weight and
// activation sparsities and thresholds.
#include <algorithm>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tflite_ops/kernels/conv_plan.h"
#include "tflite_ops/kernels/sparse_conv.h"
#include "tflite_ops/tests/sparse_conv_tester.h"

namespace hybrid_sparse {
namespace {

// Under qemu the runner sets KERNEL_TEST_CASES lower (and the cases smaller).
int TestCases() {
  const char* env = std::getenv("KERNEL_TEST_CASES");
  return env != nullptr ? std::atoi(env) : 400;
}

class KernelVariants : public ::testing::TestWithParam<int> {
 protected:
  const KernelVariant& variant() const {
    int count = 0;
    return AvailableKernels(&count)[GetParam()];
  }
};

TEST_P(KernelVariants, MatchDenseConvolutionOnRandomCases) {
  std::mt19937 rng(20261125);
  const int cases = TestCases();
  for (int i = 0; i < cases; ++i) {
    const testing::Case c = testing::RandomCase(&rng, /*small=*/cases < 400);
    EXPECT_LE(testing::MaxRelativeError(variant(), c, i), 1e-5)
        << variant().name << ": " << c.Describe();
  }
}

// Pointwise convs take their own path (each tile packs its input slice); the random cases above
// rarely draw one.
TEST_P(KernelVariants, PointwiseCasesMatchDenseConvolution) {
  std::mt19937 rng(7);
  const int cases = TestCases() / 10;
  for (int i = 0; i < cases; ++i) {
    testing::Case c = testing::RandomCase(&rng, /*small=*/cases < 40);
    ConvShape& s = c.shape;
    s.kernel_h = s.kernel_w = 1;
    s.stride_h = s.stride_w = 1;
    s.in_w += static_cast<int>(rng() % 40);  // several tiles and a partial one
    ASSERT_TRUE(ComputeConvShape(c.padding, &s));
    EXPECT_LE(testing::MaxRelativeError(variant(), c, i), 1e-5)
        << variant().name << ": " << c.Describe();
  }
}

// What the latency optimiser can choose (python/hybrid_pruning/pipeline.py offers blocks of 1
// and 4 at SPARSITIES of budget.py), on the conv kinds of a ResNet-style model: 3x3 stride 1
// and 2, 1x1 stride-2 projections, pointwise; every variant, under qemu too.
TEST_P(KernelVariants, LevelsTheOptimiserChooses) {
  struct Geometry {
    int in_h, in_w, in_c, out_c, kernel, stride;
    Padding padding;
  };
  const Geometry geometries[] = {{12, 12, 16, 16, 3, 1, Padding::kSame},
                                 {12, 11, 16, 24, 3, 2, Padding::kSame},
                                 {12, 12, 16, 24, 1, 2, Padding::kSame},
                                 {9, 13, 24, 20, 1, 1, Padding::kValid}};
  int seed = 0;
  for (const Geometry& g : geometries) {
    for (int block : {1, 4}) {
      for (float sparsity : {0.2f, 0.5f, 0.8f, 0.95f}) {
        testing::Case c;
        c.shape.batch = 1, c.shape.in_h = g.in_h, c.shape.in_w = g.in_w, c.shape.in_c = g.in_c;
        c.shape.out_c = g.out_c, c.shape.kernel_h = c.shape.kernel_w = g.kernel;
        c.shape.stride_h = c.shape.stride_w = g.stride;
        c.padding = g.padding;
        ASSERT_TRUE(ComputeConvShape(c.padding, &c.shape));
        c.activation = Activation::kRelu;
        c.block_size = block;
        c.weight_sparsity = sparsity;
        EXPECT_LE(testing::MaxRelativeError(variant(), c, ++seed), 1e-5)
            << variant().name << ": " << c.Describe();
      }
    }
  }
}

// Images whose packed input exceeds one band buffer (conv_plan.cc, kBandBytes) are cut into
// bands by size as well as by worker count; bands share the rows their taps reach, and a
// worker's buffer is refilled by bands in any order (padding rows included).
TEST_P(KernelVariants, ImagesLargerThanABandBuffer) {
  int seed = 100;
  for (int stride : {1, 2}) {
    for (int dilation : {1, 2}) {
      testing::Case c;
      c.shape.batch = 2, c.shape.in_h = 45, c.shape.in_w = 41, c.shape.in_c = 40;
      c.shape.out_c = 12, c.shape.kernel_h = c.shape.kernel_w = 3;
      c.shape.stride_h = c.shape.stride_w = stride;
      c.shape.dilation_h = c.shape.dilation_w = dilation;
      c.padding = Padding::kSame;
      ASSERT_TRUE(ComputeConvShape(c.padding, &c.shape));
      c.activation = Activation::kNone;
      c.block_size = 4;
      c.weight_sparsity = 0.8f;
      c.with_thresholds = true;
      EXPECT_LE(testing::MaxRelativeError(variant(), c, ++seed), 1e-5)
          << variant().name << ": " << c.Describe();
    }
  }
}

// Aligned taps (conv_plan.h), made the cheaper layout wherever allowed, on the variants that
// have them: every stride, dilation and padding, over bands, batches and thresholds.
TEST_P(KernelVariants, AlignedTapsMatchDenseConvolution) {
  KernelVariant v = variant();
  if (v.aligned_tap_cost > 0.0f) v.aligned_tap_cost = 1e-3f;
  int seed = 300;
  for (int stride : {1, 2}) {
    for (int dilation : {1, 2}) {
      for (Padding padding : {Padding::kSame, Padding::kValid}) {
        testing::Case c;
        c.shape.batch = 2, c.shape.in_h = 23, c.shape.in_w = 60, c.shape.in_c = 16;
        c.shape.out_c = 64, c.shape.kernel_h = c.shape.kernel_w = 3;
        c.shape.stride_h = c.shape.stride_w = stride;
        c.shape.dilation_h = c.shape.dilation_w = dilation;
        c.padding = padding;
        ASSERT_TRUE(ComputeConvShape(c.padding, &c.shape));
        c.activation = Activation::kRelu;
        c.weight_sparsity = 0.5f;
        c.with_thresholds = seed % 2 == 1;
        bool aligned = false;
        EXPECT_LE(testing::MaxRelativeError(v, c, ++seed, &aligned), 1e-5)
            << v.name << ": " << c.Describe();
        EXPECT_EQ(aligned, v.aligned_tap_cost > 0.0f) << v.name << ": " << c.Describe();
      }
    }
  }
}

// Build picks a tiling by estimated work; each one, alone, with and without aligned taps, on
// random cases of the filters and convolutions it takes, so that none is left to the cases
// that happen to choose it.
TEST_P(KernelVariants, EveryTilingMatchesDenseConvolution) {
  const KernelVariant& v = variant();
  std::mt19937 rng(20261127);
  const int cases = TestCases() / 8;
  for (const Tiling& tiling : v.tilings) {
    if (tiling.tile == 0) continue;
    for (const bool aligned : {false, true}) {
      if (aligned && (v.aligned_tap_cost <= 0.0f || tiling.aligned_floats == 0)) continue;
      KernelVariant only = v;
      for (Tiling& t : only.tilings) t = Tiling{};
      only.tilings[0] = tiling;
      only.aligned_tap_cost = aligned ? 1e-3f : 0.0f;  // aligned wherever allowed
      for (int i = 0; i < cases; ++i) {
        testing::Case c = testing::RandomCase(&rng, /*small=*/cases < 50);
        if (tiling.block_cost <= 0.0f) c.block_size = 1;
        if (tiling.cost <= 0.0f && c.block_size == 1) c.block_size = 2;
        const ConvShape& s = c.shape;
        if (!tiling.pointwise && s.kernel_h == 1 && s.kernel_w == 1 && s.stride_h == 1 &&
            s.stride_w == 1)
          continue;
        bool chose_aligned = false;
        int tile = 0;
        EXPECT_LE(testing::MaxRelativeError(only, c, i, &chose_aligned, &tile), 1e-5)
            << v.name << " tile " << tiling.tile << (aligned ? " aligned: " : ": ")
            << c.Describe();
        EXPECT_EQ(tile, tiling.tile);
        if (!aligned) EXPECT_FALSE(chose_aligned);
      }
    }
  }
}

// Small images take the smallest tile that takes the filter (its lanes are wasted least);
// large ones with unstructured filters a larger tile where the variant has one (a narrow tile
// loads a weight and an offset for fewer multiply-adds; with blocks it may still pay).
TEST_P(KernelVariants, SmallImagesTakeTheSmallestTile) {
  const KernelVariant& v = variant();
  for (int block : {1, 4}) {
    int smallest = 0, largest = 0;
    for (const Tiling& t : v.tilings) {
      if (t.tile == 0 || (block > 1 ? t.block_cost : t.cost) <= 0.0f) continue;
      smallest = smallest == 0 ? t.tile : std::min(smallest, t.tile);
      largest = std::max(largest, t.tile);
    }
    if (smallest == largest) continue;
    for (int hw : {2, 45}) {
      ConvShape s;
      s.batch = 1, s.in_h = hw, s.in_w = hw, s.in_c = 8, s.out_c = 8;
      s.kernel_h = s.kernel_w = 3;
      ASSERT_TRUE(ComputeConvShape(Padding::kSame, &s));
      std::vector<int32_t> col_ptr(s.kernel_h * s.kernel_w * s.in_c + 1, 0);
      SparseFilter f;
      f.out_c = s.out_c, f.num_cols = static_cast<int>(col_ptr.size()) - 1;
      f.block_size = block, f.num_blocks = (s.out_c + block - 1) / block;
      f.num_nonzero_blocks = 0, f.col_ptr = col_ptr.data();
      ConvPlan plan;
      ASSERT_EQ(plan.Build(s, f, nullptr, nullptr, Activation::kNone, v, 1), "");
      if (hw == 2) {
        EXPECT_EQ(plan.tile(), smallest) << v.name << " 2x2 block " << block;
      } else if (block == 1) {
        EXPECT_GT(plan.tile(), smallest) << v.name << " 45x45 block " << block;
      }
    }
  }
}

TEST_P(KernelVariants, FullySparseFilterGivesBiasThroughActivation) {
  testing::Case c;
  c.shape = {1, 5, 11, 3, 0, 0, 4, 3, 3};
  ASSERT_TRUE(ComputeConvShape(Padding::kSame, &c.shape));
  c.weight_sparsity = 1.0f;
  c.activation = Activation::kRelu6;
  EXPECT_LE(testing::MaxRelativeError(variant(), c, 7), 1e-6);
}

INSTANTIATE_TEST_SUITE_P(All, KernelVariants, ::testing::Range(0, [] {
                           int count = 0;
                           AvailableKernels(&count);
                           return count;
                         }()),
                         [](const ::testing::TestParamInfo<int>& info) {
                           int count = 0;
                           return std::string(AvailableKernels(&count)[info.param].name);
                         });

TEST(Dispatch, SelectsByNameAndDefaultsToTheFastest) {
  int count = 0;
  const KernelVariant* all = AvailableKernels(&count);
  ASSERT_GE(count, 1);
  EXPECT_STREQ(all[0].name, "reference");
  EXPECT_EQ(SelectKernel(""), &all[count - 1]);
  EXPECT_EQ(SelectKernel("reference"), &all[0]);
  EXPECT_EQ(SelectKernel("no-such-kernel"), nullptr);
// Each architecture's build must really contain its vector variant, and choose it.
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx512f")) {
    EXPECT_STREQ(SelectKernel("")->name, "avx512");
  } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    EXPECT_STREQ(SelectKernel("")->name, "avx2");
  }
#elif defined(__aarch64__)
  EXPECT_STREQ(SelectKernel("")->name, "neon");
#elif defined(__riscv)
  EXPECT_STREQ(SelectKernel("")->name, "rvv");
#endif
}

TEST(ConvShape, SameAndValidFollowTflite) {
  ConvShape s;
  s.in_h = 16, s.in_w = 15, s.kernel_h = 3, s.kernel_w = 3, s.stride_h = 2, s.stride_w = 2;
  ASSERT_TRUE(ComputeConvShape(Padding::kSame, &s));
  EXPECT_EQ(s.out_h, 8);
  EXPECT_EQ(s.out_w, 8);
  EXPECT_EQ(s.pad_top, 0);  // TFLite puts the odd padding row at the bottom
  EXPECT_EQ(s.pad_left, 1);
  ASSERT_TRUE(ComputeConvShape(Padding::kValid, &s));
  EXPECT_EQ(s.out_h, 7);
  EXPECT_EQ(s.out_w, 7);
  s.in_h = 2;
  s.dilation_h = 2;  // effective kernel 5 > 2
  EXPECT_FALSE(ComputeConvShape(Padding::kValid, &s));
}

}  // namespace
}  // namespace hybrid_sparse
