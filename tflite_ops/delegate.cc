// The one file that binds our kernels to TensorFlow Lite.
//
// The stock interpreter exports no symbols to register a custom op with, but a model whose
// custom op is unresolved still loads and only fails at AllocateTensors. So we ship a delegate
// plugin: it claims every HybridSparseConv2D node, one delegate kernel per node (so tensors
// between two of our nodes keep their own buffers), and runs it with our kernels.
// Loaded from Python with load_delegate(path) or from C++ via tflite_plugin_create_delegate().
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "tflite_ops/abi/tflite_abi.h"
#include "tflite_ops/kernels/clock.h"
#include "tflite_ops/kernels/conv_plan.h"
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

std::string BuildKernel(TfLiteContext* ctx, const TfLiteNode* node, OpKernel* k) {
  std::string err =
      ParseConvOptions(node->custom_initial_data, node->custom_initial_data_size, &k->options);
  if (!err.empty()) return "bad custom options: " + err;
  const ConvOptions& o = k->options;
  if (node->inputs == nullptr || (node->inputs->size != 4 && node->inputs->size != 5))
    return "expects 4 or 5 inputs (activations, values, col_ptr, row_block[, bias]), got " +
           std::to_string(node->inputs ? node->inputs->size : 0);
  if (node->outputs == nullptr || node->outputs->size != 1) return "expects exactly 1 output";
  k->input_tensor = node->inputs->data[0];
  k->output_tensor = node->outputs->data[0];
  for (int t : {k->input_tensor, k->output_tensor}) {
    if (t < 0 || static_cast<size_t>(t) >= ctx->tensors_size)
      return "tensor index " + std::to_string(t) + " is out of range";
  }
  if (!(err = CopyConstant(ctx, node, 1, kTfLiteFloat32, "values", &k->values)).empty() ||
      !(err = CopyConstant(ctx, node, 2, kTfLiteInt32, "col_ptr", &k->col_ptr)).empty() ||
      !(err = CopyConstant(ctx, node, 3, kTfLiteInt16, "row_block", &k->row_block)).empty())
    return err;
  if (node->inputs->size == 5 && node->inputs->data[4] >= 0) {
    if (!(err = CopyConstant(ctx, node, 4, kTfLiteFloat32, "bias", &k->bias)).empty()) return err;
    if (k->bias.size() != static_cast<size_t>(o.out_channels))
      return "bias has " + std::to_string(k->bias.size()) + " values for " +
             std::to_string(o.out_channels) + " output channels";
  }
  SparseFilter& f = k->filter;
  f.out_c = o.out_channels;
  f.num_cols = o.kernel_h * o.kernel_w * o.in_channels;
  f.block_size = o.block_size;
  f.num_blocks = (o.out_channels + o.block_size - 1) / o.block_size;
  f.num_nonzero_blocks = static_cast<int>(k->row_block.size());
  if (k->col_ptr.size() != static_cast<size_t>(f.num_cols) + 1)
    return "col_ptr has " + std::to_string(k->col_ptr.size()) + " entries, expected " +
           std::to_string(f.num_cols + 1) + " (kernel_h*kernel_w*in_channels + 1)";
  if (k->values.size() != k->row_block.size() * static_cast<size_t>(o.block_size))
    return "values has " + std::to_string(k->values.size()) + " entries, expected " +
           std::to_string(k->row_block.size() * o.block_size) + " (nonzero blocks * block_size)";
  f.col_ptr = k->col_ptr.data();
  f.row_block = k->row_block.data();
  f.values = k->values.data();
  static const float kNoValue = 0.0f;  // lets empty arrays pass the null checks
  if (k->values.empty()) f.values = &kNoValue;
  static const int16_t kNoIndex = 0;
  if (k->row_block.empty()) f.row_block = &kNoIndex;
  err = ValidateSparseFilter(f);
  if (!err.empty()) return "bad sparse filter: " + err;
  return "";
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

TfLiteStatus KernelPrepare(TfLiteContext* ctx, TfLiteNode* node) {
  auto* k = static_cast<OpKernel*>(node->user_data);
  if (k == nullptr) {
    ctx->ReportError(ctx, "%s: out of memory", kOpName);
    return kTfLiteError;
  }
  if (!k->error.empty()) return Fail(ctx, k, k->error);
  const ConvOptions& o = k->options;
  const TfLiteTensor& in = ctx->tensors[k->input_tensor];
  if (in.type != kTfLiteFloat32) return Fail(ctx, k, "input activations must be float32");
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
  const std::string error =
      k->plan.Build(s, k->filter, k->bias.empty() ? nullptr : k->bias.data(),
                    o.thresholds.empty() ? nullptr : o.thresholds.data(), o.activation,
                    *k->kernel, k->pool->threads());
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
  const int64_t useful = std::max<int64_t>(1, k->plan.macs() / kMinMacsPerThread);
  const int workers =
      k->workers.Next(static_cast<int>(std::min<int64_t>(k->pool->threads(), useful)));
  const auto start = std::chrono::steady_clock::now();
  k->plan.Run(in.data.f, out.data.f, k->pool, workers);
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

}  // extern "C"
