// The one file that binds our kernels to TensorFlow Lite.
//
// The stock interpreter exports no symbols to register a custom op with, but a model whose
// custom op is unresolved still loads and only fails at AllocateTensors. So we ship a delegate
// plugin: it claims every HybridSparseConv2D node, one delegate kernel per node (so tensors
// between two of our nodes keep their own buffers), and runs it with our kernels.
// Loaded from Python with load_delegate(path) or from C++ via tflite_plugin_create_delegate().
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "tflite_ops/abi/tflite_abi.h"
#include "tflite_ops/kernels/clock.h"
#include "tflite_ops/kernels/conv_plan.h"
#include "tflite_ops/kernels/geometry.h"
#include "tflite_ops/kernels/qs8_conv_plan.h"
#include "tflite_ops/kernels/sparse_conv.h"
#include "tflite_ops/kernels/thread_pool.h"
#include "tflite_ops/options.h"

namespace hybrid_sparse {
namespace {

// Below this many multiply-adds per worker a second worker is not even tried (WorkerChoice
// times one against more for larger layers): the pool sleeps between layers
// (ThreadPool::Rest), so a layer pays one wake-up.
constexpr int64_t kMinMacsPerThread = 1 << 17;

struct DelegateConfig {
  int num_threads = 0;  // 0: follow the interpreter's num_threads
  const KernelVariant* kernel = nullptr;
  std::unique_ptr<ThreadPool> pool;  // shared by the nodes (the interpreter runs one at a time)
};

struct OpKernel {
  std::string label;  // names the node in every message
  std::string error;  // set by Init, reported by Prepare: Init has no error channel we can link
  ConvOptions options;
  std::vector<float> values;
  std::vector<int32_t> col_ptr;
  std::vector<int16_t> row_block;
  std::vector<float> bias;
  SparseFilter filter;
  // int8 (options.dtype): the qs8 filter, int32 bias, per-channel filter scales, and the
  // requantization Prepare derives from them and the tensors' scales.
  std::vector<int8_t> values_qs8;
  std::vector<int32_t> bias_qs8;
  std::vector<float> filter_scales;
  std::vector<int32_t> multiplier, shift;
  Qs8SparseFilter filter_qs8;
  Qs8Requantization requantization;
  Qs8ConvPlan plan_qs8;
  int input_tensor = -1;
  int output_tensor = -1;
  const KernelVariant* kernel = nullptr;
  ThreadPool* pool = nullptr;
  ConvPlan plan;  // rebuilt by every Prepare: it depends on the input shape
  WorkerChoice workers;  // likewise
};

std::string Dims(const TfLiteIntArray* dims) {
  if (dims == nullptr) return "[]";
  std::string s = "[";
  for (int i = 0; i < dims->size; ++i) s += (i ? "," : "") + std::to_string(dims->data[i]);
  return s + "]";
}

const char* TensorName(const TfLiteContext* ctx, int index) {
  if (index < 0 || static_cast<size_t>(index) >= ctx->tensors_size) return "?";
  const char* name = ctx->tensors[index].name;
  return name != nullptr ? name : "?";
}

// Copies a constant 1-D tensor of the op (weights are immutable, so Init may pack them once).
template <typename T>
std::string CopyConstant(const TfLiteContext* ctx, const TfLiteNode* node, int input,
                         TfLiteType type, const char* what, std::vector<T>* out) {
  const int index = node->inputs->data[input];
  if (index < 0 || static_cast<size_t>(index) >= ctx->tensors_size)
    return std::string("input ") + std::to_string(input) + " (" + what + ") is missing";
  const TfLiteTensor& t = ctx->tensors[index];
  const std::string where =
      std::string("input ") + std::to_string(input) + " (" + what + ", tensor '" +
      TensorName(ctx, index) + "')";
  if (t.type != type) return where + " has the wrong element type " + std::to_string(t.type);
  if (t.allocation_type != kTfLiteMmapRo && t.allocation_type != kTfLitePersistentRo)
    return where + " must be a constant tensor";
  if (t.dims == nullptr || t.dims->size != 1) return where + " must be 1-D, got " + Dims(t.dims);
  const int64_t n = t.dims->data[0];
  if (n < 0 || static_cast<size_t>(n) * sizeof(T) != t.bytes)
    return where + " has " + std::to_string(t.bytes) + " bytes for shape " + Dims(t.dims);
  if (n > 0 && t.data.raw_const == nullptr) return where + " has no data";
  out->resize(n);
  if (n > 0) std::memcpy(out->data(), t.data.raw_const, t.bytes);
  return "";
}

std::string BuildF32(TfLiteContext* ctx, const TfLiteNode* node, OpKernel* k);
std::string BuildQs8(TfLiteContext* ctx, const TfLiteNode* node, OpKernel* k);

std::string BuildKernel(TfLiteContext* ctx, const TfLiteNode* node, OpKernel* k) {
  std::string err =
      ParseConvOptions(node->custom_initial_data, node->custom_initial_data_size, &k->options);
  if (!err.empty()) return "bad custom options: " + err;
  const ConvOptions& o = k->options;
  k->input_tensor = node->inputs != nullptr && node->inputs->size > 0 ? node->inputs->data[0] : -1;
  if (node->outputs == nullptr || node->outputs->size != 1) return "expects exactly 1 output";
  k->output_tensor = node->outputs->data[0];
  for (int t : {k->input_tensor, k->output_tensor}) {
    if (t < 0 || static_cast<size_t>(t) >= ctx->tensors_size)
      return "tensor index " + std::to_string(t) + " is out of range";
  }
  return o.dtype == DataType::kInt8 ? BuildQs8(ctx, node, k) : BuildF32(ctx, node, k);
}

// The checks both filter families share: the index arrays' sizes, then the format itself.
template <typename Filter>
std::string CheckFilter(const ConvOptions& o, int groups, size_t num_values,
                        const std::vector<int32_t>& col_ptr, const std::vector<int16_t>& row_block,
                        Filter* f) {
  f->out_c = o.out_channels;
  f->num_cols = o.kernel_h * o.kernel_w * groups;
  f->block_size = o.block_size;
  f->num_blocks = (o.out_channels + o.block_size - 1) / o.block_size;
  f->num_nonzero_blocks = static_cast<int>(row_block.size());
  if (col_ptr.size() != static_cast<size_t>(f->num_cols) + 1)
    return "col_ptr has " + std::to_string(col_ptr.size()) + " entries, expected " +
           std::to_string(f->num_cols + 1) + " (columns + 1)";
  const size_t per_block = num_values / std::max<size_t>(1, row_block.size());
  if (num_values != row_block.size() * per_block ||
      (!row_block.empty() && per_block != static_cast<size_t>(o.block_size) *
                                              (o.dtype == DataType::kInt8 ? 4 : 1)))
    return "values has " + std::to_string(num_values) + " entries for " +
           std::to_string(row_block.size()) + " nonzero blocks of block_size " +
           std::to_string(o.block_size);
  f->col_ptr = col_ptr.data();
  static const int16_t kNoIndex = 0;  // lets empty arrays pass the null checks
  f->row_block = row_block.empty() ? &kNoIndex : row_block.data();
  return "";
}

std::string CheckBias(size_t n, int out_channels) {
  if (n == static_cast<size_t>(out_channels)) return "";
  return "bias has " + std::to_string(n) + " values for " + std::to_string(out_channels) +
         " output channels";
}

std::string BuildF32(TfLiteContext* ctx, const TfLiteNode* node, OpKernel* k) {
  const ConvOptions& o = k->options;
  if (node->inputs->size != 4 && node->inputs->size != 5)
    return "expects 4 or 5 inputs (activations, values, col_ptr, row_block[, bias]), got " +
           std::to_string(node->inputs->size);
  std::string err;
  if (!(err = CopyConstant(ctx, node, 1, kTfLiteFloat32, "values", &k->values)).empty() ||
      !(err = CopyConstant(ctx, node, 2, kTfLiteInt32, "col_ptr", &k->col_ptr)).empty() ||
      !(err = CopyConstant(ctx, node, 3, kTfLiteInt16, "row_block", &k->row_block)).empty())
    return err;
  if (node->inputs->size == 5 && node->inputs->data[4] >= 0) {
    if (!(err = CopyConstant(ctx, node, 4, kTfLiteFloat32, "bias", &k->bias)).empty()) return err;
    if (!(err = CheckBias(k->bias.size(), o.out_channels)).empty()) return err;
  }
  SparseFilter& f = k->filter;
  err = CheckFilter(o, o.in_channels, k->values.size(), k->col_ptr, k->row_block, &f);
  if (!err.empty()) return err;
  static const float kNoValue = 0.0f;
  f.values = k->values.empty() ? &kNoValue : k->values.data();
  err = ValidateSparseFilter(f);
  return err.empty() ? "" : "bad sparse filter: " + err;
}

std::string BuildQs8(TfLiteContext* ctx, const TfLiteNode* node, OpKernel* k) {
  const ConvOptions& o = k->options;
  if (node->inputs->size != 6)
    return "int8 expects 6 inputs (activations, values, col_ptr, row_block, bias or -1, "
           "filter_scales), got " + std::to_string(node->inputs->size);
  std::string err;
  if (!(err = CopyConstant(ctx, node, 1, kTfLiteInt8, "values", &k->values_qs8)).empty() ||
      !(err = CopyConstant(ctx, node, 2, kTfLiteInt32, "col_ptr", &k->col_ptr)).empty() ||
      !(err = CopyConstant(ctx, node, 3, kTfLiteInt16, "row_block", &k->row_block)).empty() ||
      !(err = CopyConstant(ctx, node, 5, kTfLiteFloat32, "filter_scales", &k->filter_scales))
           .empty())
    return err;
  if (node->inputs->data[4] >= 0) {
    if (!(err = CopyConstant(ctx, node, 4, kTfLiteInt32, "bias", &k->bias_qs8)).empty())
      return err;
    if (!(err = CheckBias(k->bias_qs8.size(), o.out_channels)).empty()) return err;
  }
  if (k->filter_scales.size() != static_cast<size_t>(o.out_channels))
    return "filter_scales has " + std::to_string(k->filter_scales.size()) + " values for " +
           std::to_string(o.out_channels) + " output channels";
  for (float scale : k->filter_scales) {
    if (!(scale > 0.0f) || !std::isfinite(scale))
      return "filter_scales holds a scale that is not positive and finite";
  }
  Qs8SparseFilter& f = k->filter_qs8;
  err = CheckFilter(o, (o.in_channels + 3) / 4, k->values_qs8.size(), k->col_ptr, k->row_block,
                    &f);
  if (!err.empty()) return err;
  static const int8_t kNoValue = 0;
  f.values = k->values_qs8.empty() ? &kNoValue : k->values_qs8.data();
  err = ValidateSparseFilter(f);
  return err.empty() ? "" : "bad sparse filter: " + err;
}

void* KernelInit(TfLiteContext* ctx, const char* buffer, size_t /*length*/) {
  auto* k = new (std::nothrow) OpKernel;
  if (k == nullptr) return nullptr;
  const auto* params = reinterpret_cast<const TfLiteDelegateParams*>(buffer);
  if (params == nullptr || params->nodes_to_replace == nullptr ||
      params->nodes_to_replace->size != 1) {
    k->label = kOpName;
    k->error = "delegate kernel expected exactly one node to replace";
    return k;
  }
  const int node_index = params->nodes_to_replace->data[0];
  TfLiteNode* node = nullptr;
  TfLiteRegistration* reg = nullptr;
  k->label = std::string(kOpName) + " node " + std::to_string(node_index);
  if (ctx->GetNodeAndRegistration(ctx, node_index, &node, &reg) != kTfLiteOk || node == nullptr) {
    k->error = "cannot read the original node";
    return k;
  }
  if (node->outputs != nullptr && node->outputs->size > 0)
    k->label += std::string(" (output '") + TensorName(ctx, node->outputs->data[0]) + "')";
  k->error = BuildKernel(ctx, node, k);
  const auto* config = static_cast<const DelegateConfig*>(params->delegate->data_);
  k->kernel = config->kernel;
  k->pool = config->pool.get();
  return k;
}

void KernelFree(TfLiteContext*, void* buffer) { delete static_cast<OpKernel*>(buffer); }

TfLiteStatus Fail(TfLiteContext* ctx, const OpKernel* k, const std::string& msg) {
  ctx->ReportError(ctx, "%s: %s", k->label.c_str(), msg.c_str());
  return kTfLiteError;
}

// TFLite's int8 conv Prepare: per-channel multipliers from the tensors' scales (in double, as
// PopulateConvolutionQuantizationParams computes them) and the fused activation's range.
std::string PrepareQs8(TfLiteContext* ctx, const ConvShape& s, OpKernel* k) {
  const TfLiteQuantizationParams in = ctx->tensors[k->input_tensor].params;
  const TfLiteQuantizationParams out = ctx->tensors[k->output_tensor].params;
  if (!(in.scale > 0.0f) || !(out.scale > 0.0f))
    return "int8 input and output need a positive per-tensor scale";
  const ConvOptions& o = k->options;
  k->multiplier.resize(o.out_channels);
  k->shift.resize(o.out_channels);
  for (int c = 0; c < o.out_channels; ++c) {
    const double real = static_cast<double>(in.scale) * static_cast<double>(k->filter_scales[c]) /
                        static_cast<double>(out.scale);
    QuantizeMultiplier(real, o.rounding, &k->multiplier[c], &k->shift[c]);
  }
  auto quantize = [&out](float f) {
    return out.zero_point + static_cast<int32_t>(std::round(f / out.scale));
  };
  Qs8Requantization& q = k->requantization;
  q.multiplier = k->multiplier.data();
  q.shift = k->shift.data();
  q.output_zero_point = out.zero_point;
  q.rounding = o.rounding;
  q.min = -128;
  q.max = 127;
  if (o.activation != Activation::kNone) q.min = std::max(q.min, quantize(0.0f));
  if (o.activation == Activation::kRelu6) q.max = std::min(q.max, quantize(6.0f));
  return k->plan_qs8.Build(s, k->filter_qs8, k->bias_qs8.empty() ? nullptr : k->bias_qs8.data(),
                           in.zero_point, q, *k->kernel, k->pool->threads());
}

TfLiteStatus KernelPrepare(TfLiteContext* ctx, TfLiteNode* node) {
  auto* k = static_cast<OpKernel*>(node->user_data);
  if (k == nullptr) {
    ctx->ReportError(ctx, "%s: out of memory", kOpName);
    return kTfLiteError;
  }
  if (!k->error.empty()) return Fail(ctx, k, k->error);
  const ConvOptions& o = k->options;
  const TfLiteTensor& in = ctx->tensors[k->input_tensor];
  const bool int8 = o.dtype == DataType::kInt8;
  const TfLiteType type = int8 ? kTfLiteInt8 : kTfLiteFloat32;
  if (in.type != type || ctx->tensors[k->output_tensor].type != type)
    return Fail(ctx, k, std::string("input and output must be ") +
                            (int8 ? "int8 (the options say dtype int8)" : "float32"));
  if (in.dims == nullptr || in.dims->size != 4)
    return Fail(ctx, k, "input must be 4-D NHWC, got " + Dims(in.dims));
  if (in.dims->data[3] != o.in_channels)
    return Fail(ctx, k, "input has " + std::to_string(in.dims->data[3]) +
                            " channels, options say in_channels = " +
                            std::to_string(o.in_channels));
  ConvShape s;
  s.batch = in.dims->data[0];
  s.in_h = in.dims->data[1];
  s.in_w = in.dims->data[2];
  s.in_c = o.in_channels;
  s.out_c = o.out_channels;
  s.kernel_h = o.kernel_h;
  s.kernel_w = o.kernel_w;
  s.stride_h = o.stride_h;
  s.stride_w = o.stride_w;
  s.dilation_h = o.dilation_h;
  s.dilation_w = o.dilation_w;
  if (s.batch < 1 || s.in_h < 1 || s.in_w < 1)
    return Fail(ctx, k, "input shape " + Dims(in.dims) + " is empty");
  if (!ComputeConvShape(o.padding, &s))
    return Fail(ctx, k, "input " + Dims(in.dims) + " is smaller than the dilated kernel");
  const int64_t rows = static_cast<int64_t>(s.batch) * s.out_h;
  if (rows * s.out_w * s.out_c > (int64_t{1} << 31) / 4)
    return Fail(ctx, k, "output would exceed 2 GiB");
  const std::string error = int8 ? PrepareQs8(ctx, s, k)
                                 : k->plan.Build(s, k->filter, k->bias.empty() ? nullptr : k->bias.data(),
                                                 o.thresholds.empty() ? nullptr : o.thresholds.data(),
                                                 o.activation, *k->kernel, k->pool->threads());
  if (!error.empty()) return Fail(ctx, k, error);
  k->workers = WorkerChoice();  // a new shape: time one worker against more afresh
  auto* dims = static_cast<TfLiteIntArray*>(std::malloc(sizeof(int) * 5));
  if (dims == nullptr) return Fail(ctx, k, "out of memory");
  dims->size = 4;
  dims->data[0] = s.batch;
  dims->data[1] = s.out_h;
  dims->data[2] = s.out_w;
  dims->data[3] = s.out_c;
  return ctx->ResizeTensor(ctx, &ctx->tensors[k->output_tensor], dims);
}

TfLiteStatus KernelInvoke(TfLiteContext* ctx, TfLiteNode* node) {
  auto* k = static_cast<OpKernel*>(node->user_data);
  const TfLiteTensor& in = ctx->tensors[k->input_tensor];
  TfLiteTensor& out = ctx->tensors[k->output_tensor];
  if (in.data.raw == nullptr || out.data.raw == nullptr)
    return Fail(ctx, k, "input or output tensor has no buffer");
  const bool int8 = k->options.dtype == DataType::kInt8;
  const int64_t macs = int8 ? k->plan_qs8.macs() : k->plan.macs();
  const int64_t useful = std::max<int64_t>(1, macs / kMinMacsPerThread);
  const int workers =
      k->workers.Next(static_cast<int>(std::min<int64_t>(k->pool->threads(), useful)));
  const auto start = std::chrono::steady_clock::now();
  if (int8) {
    k->plan_qs8.Run(reinterpret_cast<const int8_t*>(in.data.raw_const),
                    reinterpret_cast<int8_t*>(out.data.raw), k->pool, workers);
  } else {
    k->plan.Run(in.data.f, out.data.f, k->pool, workers);
  }
  if (workers > 1) k->pool->Rest();
  k->workers.Report(workers, std::chrono::duration<double>(
                                 std::chrono::steady_clock::now() - start).count());
  return kTfLiteOk;
}

TfLiteRegistration KernelRegistration() {
  TfLiteRegistration r;
  std::memset(&r, 0, sizeof(r));
  r.init = KernelInit;
  r.free = KernelFree;
  r.prepare = KernelPrepare;
  r.invoke = KernelInvoke;
  r.builtin_code = kTfLiteBuiltinDelegate;
  r.custom_name = kOpName;
  r.version = 1;
  return r;
}

TfLiteStatus DelegatePrepare(TfLiteContext* ctx, TfLiteDelegate* delegate) {
  auto* config = static_cast<DelegateConfig*>(delegate->data_);
  if (config->pool == nullptr) {
    const int threads =
        config->num_threads > 0 ? config->num_threads : ctx->recommended_num_threads;
    config->pool = std::make_unique<ThreadPool>(std::max(1, threads));
  }
  TfLiteIntArray* plan = nullptr;
  if (ctx->GetExecutionPlan(ctx, &plan) != kTfLiteOk || plan == nullptr) return kTfLiteError;
  std::vector<int> ours;
  for (int i = 0; i < plan->size; ++i) {
    TfLiteNode* node = nullptr;
    TfLiteRegistration* reg = nullptr;
    if (ctx->GetNodeAndRegistration(ctx, plan->data[i], &node, &reg) != kTfLiteOk) continue;
    if (reg != nullptr && reg->builtin_code == kTfLiteBuiltinCustom && reg->custom_name != nullptr &&
        std::strcmp(reg->custom_name, kOpName) == 0)
      ours.push_back(plan->data[i]);
  }
  // One kernel per node: a subset of several nodes would leave their shared tensors unallocated.
  struct {
    int size;
    int data[1];
  } one;
  for (int node_index : ours) {
    one.size = 1;
    one.data[0] = node_index;
    const TfLiteStatus status = ctx->ReplaceNodeSubsetsWithDelegateKernels(
        ctx, KernelRegistration(), reinterpret_cast<const TfLiteIntArray*>(&one), delegate);
    if (status != kTfLiteOk) return status;
  }
  return kTfLiteOk;
}

}  // namespace
}  // namespace hybrid_sparse

extern "C" {

// Python's load_delegate() passes the option count as a C int, so it is declared int here.
__attribute__((visibility("default"))) TfLiteDelegate* tflite_plugin_create_delegate(
    char** keys, char** values, int num_options, void (*report_error)(const char*)) {
  auto* config = new hybrid_sparse::DelegateConfig;
  auto fail = [&](const std::string& msg) -> TfLiteDelegate* {
    if (report_error) report_error(("HybridSparseConv2D delegate: " + msg).c_str());
    delete config;
    return nullptr;
  };
  std::string kernel_name;
  for (int i = 0; i < num_options; ++i) {
    const std::string key = keys[i] ? keys[i] : "";
    const std::string value = values[i] ? values[i] : "";
    if (key == "num_threads") {
      char* end = nullptr;
      const long n = std::strtol(value.c_str(), &end, 10);
      if (value.empty() || *end != '\0' || n < 0 || n > 1024)
        return fail("option num_threads='" + value + "' is not an integer in [0, 1024]");
      config->num_threads = static_cast<int>(n);
    } else if (key == "kernel") {
      kernel_name = value;
    } else {
      return fail("unknown option '" + key + "' (known: num_threads, kernel)");
    }
  }
  config->kernel = hybrid_sparse::SelectKernel(kernel_name.c_str());
  if (config->kernel == nullptr) {
    int count = 0;
    const hybrid_sparse::KernelVariant* all = hybrid_sparse::AvailableKernels(&count);
    std::string known;
    for (int i = 0; i < count; ++i) known += std::string(i ? ", " : "") + all[i].name;
    return fail("option kernel='" + kernel_name + "' is not available here (available: " +
                known + ")");
  }
  auto* d = new TfLiteDelegate;
  std::memset(d, 0, sizeof(*d));
  d->data_ = config;
  d->Prepare = hybrid_sparse::DelegatePrepare;
  d->flags = kTfLiteDelegateFlagsAllowDynamicTensors;
  return d;
}

__attribute__((visibility("default"))) void tflite_plugin_destroy_delegate(TfLiteDelegate* d) {
  if (d == nullptr) return;
  delete static_cast<hybrid_sparse::DelegateConfig*>(d->data_);
  delete d;
}

// Not part of the delegate: the analytic latency model's clock (kernels/clock.h), for ctypes.
__attribute__((visibility("default"))) double hybrid_sparse_clock_ghz() {
  return hybrid_sparse::MeasureClockGhz();
}

// Every ISA's microkernel geometry as JSON (kernels/geometry.h), for the analytic model.
__attribute__((visibility("default"))) const char* hybrid_sparse_kernel_geometry() {
  static const std::string json = hybrid_sparse::geometry::GeometryJson();
  return json.c_str();
}

}  // extern "C"
