#include "tflite_ops/options.h"

#include <cmath>
#include <cstring>

namespace hybrid_sparse {
namespace {

class Reader {
 public:
  Reader(const void* data, size_t size) : data_(static_cast<const uint8_t*>(data)), size_(size) {}

  // Little-endian decode byte by byte: independent of host endianness and alignment.
  bool ReadU32(uint32_t* v) {
    if (data_ == nullptr || pos_ > size_ || size_ - pos_ < 4) return false;
    *v = static_cast<uint32_t>(data_[pos_]) | static_cast<uint32_t>(data_[pos_ + 1]) << 8 |
         static_cast<uint32_t>(data_[pos_ + 2]) << 16 | static_cast<uint32_t>(data_[pos_ + 3]) << 24;
    pos_ += 4;
    return true;
  }
  bool ReadI32(int32_t* v) {
    uint32_t u;
    if (!ReadU32(&u)) return false;
    std::memcpy(v, &u, 4);
    return true;
  }
  bool ReadF32(float* v) {
    uint32_t u;
    if (!ReadU32(&u)) return false;
    std::memcpy(v, &u, 4);
    return true;
  }
  size_t remaining() const { return size_ - pos_; }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

}  // namespace

std::string ParseConvOptions(const void* data, size_t size, ConvOptions* o) {
  if (data == nullptr || size < kOptionsHeaderBytesV1)
    return "custom options are " + std::to_string(size) + " bytes, need at least " +
           std::to_string(kOptionsHeaderBytesV1);
  if (std::memcmp(data, "HSPC", 4) != 0) return "custom options do not start with magic 'HSPC'";
  Reader r(static_cast<const uint8_t*>(data) + 4, size - 4);
  int32_t version = 0, padding = 0, activation = 0, num_thresholds = 0, dtype = 0, rounding = 0;
  // The header size was checked above, so these reads cannot fail.
  r.ReadI32(&version);
  r.ReadI32(&o->kernel_h);
  r.ReadI32(&o->kernel_w);
  r.ReadI32(&o->in_channels);
  r.ReadI32(&o->out_channels);
  r.ReadI32(&o->stride_h);
  r.ReadI32(&o->stride_w);
  r.ReadI32(&o->dilation_h);
  r.ReadI32(&o->dilation_w);
  r.ReadI32(&padding);
  r.ReadI32(&activation);
  r.ReadI32(&o->block_size);
  r.ReadI32(&num_thresholds);
  if (version != 1 && version != kFormatVersion)
    return "unsupported format_version " + std::to_string(version) + " (this build reads 1 and " +
           std::to_string(kFormatVersion) + ")";
  if (version == kFormatVersion) {
    if (size < kOptionsHeaderBytes)
      return "custom options are " + std::to_string(size) + " bytes, format version 2 needs " +
             std::to_string(kOptionsHeaderBytes);
    r.ReadI32(&dtype);
    r.ReadI32(&rounding);
  }
  if (dtype != 0 && dtype != 1)
    return "dtype = " + std::to_string(dtype) + " (expected 0 float32 or 1 int8)";
  o->dtype = static_cast<DataType>(dtype);
  if (rounding != 0 && rounding != 1)
    return "rounding = " + std::to_string(rounding) + " (expected 0 double or 1 single)";
  o->rounding = static_cast<Rounding>(rounding);
  if (o->dtype == DataType::kInt8 && num_thresholds != 0)
    return "int8 takes no activation thresholds";
  // Limits keep every later size computation far from int overflow.
  constexpr int32_t kMaxDim = 1 << 16;
  struct Field {
    const char* name;
    int32_t value;
    int32_t max;
  };
  const Field fields[] = {
      {"kernel_h", o->kernel_h, 1024},      {"kernel_w", o->kernel_w, 1024},
      {"in_channels", o->in_channels, kMaxDim}, {"out_channels", o->out_channels, kMaxDim},
      {"stride_h", o->stride_h, 1024},      {"stride_w", o->stride_w, 1024},
      {"dilation_h", o->dilation_h, 1024},  {"dilation_w", o->dilation_w, 1024},
      {"block_size", o->block_size, 64},
  };
  for (const Field& f : fields) {
    if (f.value < 1 || f.value > f.max)
      return std::string(f.name) + " = " + std::to_string(f.value) + " is outside [1, " +
             std::to_string(f.max) + "]";
  }
  if (static_cast<int64_t>(o->kernel_h) * o->kernel_w * o->in_channels > (1 << 30))
    return "kernel_h * kernel_w * in_channels is too large";
  if (padding != 0 && padding != 1)
    return "padding = " + std::to_string(padding) + " (expected 0 SAME or 1 VALID)";
  o->padding = static_cast<Padding>(padding);
  if (activation < 0 || activation > 2)
    return "activation = " + std::to_string(activation) + " (expected 0 none, 1 ReLU, 2 ReLU6)";
  o->activation = static_cast<Activation>(activation);
  if (num_thresholds != 0 && num_thresholds != o->in_channels)
    return "num_thresholds = " + std::to_string(num_thresholds) + " must be 0 or in_channels (" +
           std::to_string(o->in_channels) + ")";
  if (r.remaining() != static_cast<size_t>(num_thresholds) * 4)
    return "custom options hold " + std::to_string(r.remaining()) +
           " bytes of thresholds, expected " + std::to_string(num_thresholds * 4);
  o->thresholds.resize(num_thresholds);
  for (int32_t i = 0; i < num_thresholds; ++i) {
    r.ReadF32(&o->thresholds[i]);
    if (!std::isfinite(o->thresholds[i]) || o->thresholds[i] < 0.0f)
      return "threshold[" + std::to_string(i) + "] is negative or not finite";
  }
  return "";
}

}  // namespace hybrid_sparse
