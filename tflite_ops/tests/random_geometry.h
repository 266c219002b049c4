// Random convolution geometry for the kernel tests of both dtypes: sizes, kernel, strides,
// dilations and padding drawn within bounds, output sizes filled in by ComputeConvShape.
#ifndef TFLITE_OPS_TESTS_RANDOM_GEOMETRY_H_
#define TFLITE_OPS_TESTS_RANDOM_GEOMETRY_H_

#include <random>

#include "tflite_ops/kernels/sparse_conv.h"

namespace hybrid_sparse {
namespace testing {

struct GeometryBounds {
  int max_h, max_w, max_c, max_kernel, max_stride, max_dilation;
};

inline ConvShape RandomGeometry(std::mt19937* rng, const GeometryBounds& b, Padding* padding) {
  auto uniform = [rng](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(*rng); };
  ConvShape s;
  do {
    s = ConvShape();
    s.batch = uniform(1, 2);
    s.in_h = uniform(1, b.max_h);
    s.in_w = uniform(1, b.max_w);
    s.in_c = uniform(1, b.max_c);
    s.out_c = uniform(1, b.max_c);
    s.kernel_h = uniform(1, b.max_kernel);
    s.kernel_w = uniform(1, b.max_kernel);
    s.stride_h = uniform(1, b.max_stride);
    s.stride_w = uniform(1, b.max_stride);
    s.dilation_h = uniform(1, b.max_dilation);
    s.dilation_w = uniform(1, b.max_dilation);
    *padding = uniform(0, 1) ? Padding::kSame : Padding::kValid;
  } while (!ComputeConvShape(*padding, &s));
  return s;
}

}  // namespace testing
}  // namespace hybrid_sparse

#endif  // TFLITE_OPS_TESTS_RANDOM_GEOMETRY_H_
