// Custom options of HybridSparseConv2D: a fixed little-endian byte layout, versioned, parsed
// with a bounds check before every read so that malformed options can only produce an error.
// The writer is python/hybrid_pruning/op_format.py; keep the two in step.
//
//   offset  type      field
//   0       char[4]   magic "HSPC"
//   4       int32     format_version (2; version 1, float32 only, lacks the two fields at 56)
//   8       int32     kernel_h, kernel_w, in_channels, out_channels
//   24      int32     stride_h, stride_w, dilation_h, dilation_w
//   40      int32     padding (0 SAME, 1 VALID)
//   44      int32     activation (0 none, 1 ReLU, 2 ReLU6)
//   48      int32     block_size
//   52      int32     num_thresholds (0, or in_channels; float32 only)
//   56      int32     dtype (0 float32, 1 int8)
//   60      int32     rounding (int8: 0 TFLite's default double rounding, 1 single rounding)
//   64      float32   thresholds[num_thresholds]
//
// The op's inputs, float32: 0 activations NHWC float32; 1 values float32; 2 col_ptr int32;
// 3 row_block int16; 4 bias float32 [out_channels] (optional, -1). Output: NHWC float32.
// int8 (sparse_conv.h's qs8 format): 0 activations NHWC int8 (per-tensor scale and zero
// point); 1 values int8; 2 col_ptr int32; 3 row_block int16; 4 bias int32 [out_channels]
// (optional, -1); 5 filter scales float32 [out_channels]. Output: NHWC int8 (per-tensor).
#ifndef TFLITE_OPS_OPTIONS_H_
#define TFLITE_OPS_OPTIONS_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "tflite_ops/kernels/sparse_conv.h"

namespace hybrid_sparse {

constexpr char kOpName[] = "HybridSparseConv2D";
constexpr int32_t kFormatVersion = 2;
constexpr size_t kOptionsHeaderBytes = 64;
constexpr size_t kOptionsHeaderBytesV1 = 56;

enum class DataType : int32_t { kFloat32 = 0, kInt8 = 1 };

struct ConvOptions {
  int32_t kernel_h = 0, kernel_w = 0, in_channels = 0, out_channels = 0;
  int32_t stride_h = 1, stride_w = 1, dilation_h = 1, dilation_w = 1;
  Padding padding = Padding::kSame;
  Activation activation = Activation::kNone;
  int32_t block_size = 1;
  DataType dtype = DataType::kFloat32;
  Rounding rounding = Rounding::kDouble;
  std::vector<float> thresholds;  // empty, or one per input channel
};

// Parses and validates; returns "" on success, else a message naming the offending field.
std::string ParseConvOptions(const void* data, size_t size, ConvOptions* out);

}  // namespace hybrid_sparse

#endif  // TFLITE_OPS_OPTIONS_H_
