#include <random>

#include <gtest/gtest.h>

#include "tflite_ops/kernels/sparse_conv.h"
#include "tflite_ops/tests/sparse_conv_tester.h"

namespace hybrid_sparse {
namespace {

TEST(ReferenceKernel, MatchesDenseConvolutionOnRandomCases) {
  std::mt19937 rng(20261125);
  for (int i = 0; i < 400; ++i) {
    const testing::Case c = testing::RandomCase(&rng, /*small=*/false);
    EXPECT_LE(testing::MaxRelativeError(SparseConvRowsReference, c, i), 1e-5) << c.Describe();
  }
}

TEST(ReferenceKernel, FullySparseFilterGivesBiasThroughActivation) {
  testing::Case c;
  c.shape = {1, 5, 5, 3, 0, 0, 4, 3, 3};
  ASSERT_TRUE(ComputeConvShape(Padding::kSame, &c.shape));
  c.weight_sparsity = 1.0f;
  c.activation = Activation::kRelu6;
  EXPECT_LE(testing::MaxRelativeError(SparseConvRowsReference, c, 7), 1e-6);
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
