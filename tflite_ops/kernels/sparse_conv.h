// HybridSparseConv2D kernels: plain C++ on raw pointers and shapes, no TFLite types, so that
// every ISA variant, the TFLite binding and the tests share one signature.
//
// Sparse filter format (format version 1, shared with python/hybrid_pruning/op_format.py):
//   The filter is a matrix W[out_c][k] with k = (kh * kernel_w + kw) * in_c + ic, i.e. the
//   order of one NHWC input patch. Output channels are grouped in blocks of `block_size`
//   consecutive channels (block_size 1 = unstructured). W is stored column-compressed by k:
//     col_ptr[k] .. col_ptr[k+1]   the nonzero blocks of column k (col_ptr has num_cols+1)
//     row_block[j]                 which output-channel block nonzero block j belongs to
//     values[j*block_size + r]     the weight of output channel row_block[j]*block_size + r
//   Columns, not rows, are compressed because the kernel walks the input patch: each input
//   activation is read once and, when it is zero or below its channel's threshold, its whole
//   column of weights is skipped. Blocks make the inner update a fixed-width vector FMA.
#ifndef TFLITE_OPS_KERNELS_SPARSE_CONV_H_
#define TFLITE_OPS_KERNELS_SPARSE_CONV_H_

#include <cstdint>
#include <string>

namespace hybrid_sparse {

enum class Padding : int32_t { kSame = 0, kValid = 1 };
enum class Activation : int32_t { kNone = 0, kRelu = 1, kRelu6 = 2 };

// Geometry of one convolution; output sizes and padding come from ComputeConvShape.
struct ConvShape {
  int batch = 0;
  int in_h = 0, in_w = 0, in_c = 0;
  int out_h = 0, out_w = 0, out_c = 0;
  int kernel_h = 0, kernel_w = 0;
  int stride_h = 1, stride_w = 1;
  int dilation_h = 1, dilation_w = 1;
  int pad_top = 0, pad_left = 0;
};

// Fills out_h/out_w/pad_top/pad_left the way TFLite's CONV_2D does (SAME puts the extra
// padding row/column at the bottom/right). Returns false if the output would be empty.
bool ComputeConvShape(Padding padding, ConvShape* shape);

struct SparseFilter {
  int out_c = 0;
  int num_cols = 0;  // kernel_h * kernel_w * in_c
  int block_size = 1;
  int num_blocks = 0;  // ceil(out_c / block_size)
  int num_nonzero_blocks = 0;
  const int32_t* col_ptr = nullptr;    // [num_cols + 1]
  const int16_t* row_block = nullptr;  // [num_nonzero_blocks]
  const float* values = nullptr;       // [num_nonzero_blocks * block_size]
};

// Checks every index of the format so that a kernel can trust it; returns "" when valid,
// otherwise a message naming the first problem. O(nonzeros).
std::string ValidateSparseFilter(const SparseFilter& filter);

struct ConvArgs {
  const ConvShape* shape;
  const SparseFilter* filter;
  const float* input;       // [batch, in_h, in_w, in_c]
  const float* bias;        // [out_c] or nullptr
  const float* thresholds;  // [in_c]: |x| < thresholds[c] counts as zero; nullptr = none
  Activation activation;
  float* output;            // [batch, out_h, out_w, out_c]
  float* scratch;           // [num_blocks * block_size * variant.scratch_pixels]
};

inline float ApplyActivation(float v, Activation act) {
  if (act == Activation::kRelu) return v > 0.0f ? v : 0.0f;
  if (act == Activation::kRelu6) return v < 0.0f ? 0.0f : (v > 6.0f ? 6.0f : v);
  return v;
}

// Computes output rows [row_begin, row_end) of the flattened (batch * out_h) row range, so
// that callers can split the work across threads.
using SparseConvRowsFn = void (*)(const ConvArgs& args, int row_begin, int row_end);

// The portable reference: the definition every optimised variant is tested against.
void SparseConvRowsReference(const ConvArgs& args, int row_begin, int row_end);

// x86-64 AVX2+FMA: eight output pixels of a row at a time (one per vector lane), so every
// nonzero weight is one broadcast FMA for all eight; a column is skipped when all eight
// inputs are zero or below threshold. Needs scratch_pixels = 8.
void SparseConvRowsAvx2(const ConvArgs& args, int row_begin, int row_end);

struct KernelVariant {
  const char* name;
  SparseConvRowsFn rows;
  int scratch_pixels;  // ConvArgs::scratch holds num_blocks * block_size * scratch_pixels
};

// Every variant this build has and this CPU can run, reference first.
const KernelVariant* AvailableKernels(int* count);

// The fastest available variant, or the one named `name` ("" = fastest); nullptr if unknown.
const KernelVariant* SelectKernel(const char* name);

}  // namespace hybrid_sparse

#endif  // TFLITE_OPS_KERNELS_SPARSE_CONV_H_
