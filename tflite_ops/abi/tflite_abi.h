// Our own declarations of the slice of TensorFlow Lite's C ABI that a delegate plugin touches.
//
// No package reachable here ships TFLite's C headers and the interpreter's shared objects
// export no TFLite symbols, so we cannot include or link TFLite. The interpreter hands us
// pointers to these structs and calls through function pointers in them, so only their memory
// layout matters. The layout mirrors tensorflow/lite/core/c/common.h as of TensorFlow 2.21 /
// ai-edge-litert 2.3 (the pinned wheels), 64-bit targets. Fields are in the original order and
// nothing may be reordered; fields we never touch keep their slot as opaque pointers/ints.
// tflite_ops/tests/tflite_abi_layout_test pins the sizes and offsets that the runtime relies on, and every
// interpreter test exercises them for real.
//
// Only tflite_ops/delegate.cc may include this file: the kernels know nothing of TFLite.
#ifndef TFLITE_OPS_ABI_TFLITE_ABI_H_
#define TFLITE_OPS_ABI_TFLITE_ABI_H_

#include <stddef.h>
#include <stdint.h>

extern "C" {

typedef enum TfLiteStatus {
  kTfLiteOk = 0,
  kTfLiteError = 1,
} TfLiteStatus;

// Only the values we check; the enum is an int-sized field.
typedef enum TfLiteType {
  kTfLiteNoType = 0,
  kTfLiteFloat32 = 1,
  kTfLiteInt32 = 2,
  kTfLiteInt16 = 7,
  kTfLiteInt8 = 9,
} TfLiteType;

typedef enum TfLiteAllocationType {
  kTfLiteMemNone = 0,
  kTfLiteMmapRo = 1,
  kTfLiteArenaRw = 2,
  kTfLiteArenaRwPersistent = 3,
  kTfLiteDynamic = 4,
  kTfLitePersistentRo = 5,
} TfLiteAllocationType;

// BuiltinOperator codes from the flatbuffer schema.
enum {
  kTfLiteBuiltinCustom = 32,
  kTfLiteBuiltinDelegate = 51,
};

enum {
  kTfLiteDelegateFlagsNone = 0,
  // Required: without it the interpreter prepares the still-unresolved custom op before
  // giving the delegate a chance to claim it, and fails.
  kTfLiteDelegateFlagsAllowDynamicTensors = 1,
};

typedef struct TfLiteIntArray {
  int size;
  int data[];  // flexible array member (a GNU extension in C++; gcc and clang accept it)
} TfLiteIntArray;

typedef struct TfLiteQuantizationParams {
  float scale;
  int32_t zero_point;
} TfLiteQuantizationParams;

typedef struct TfLiteQuantization {
  int type;  // TfLiteQuantizationType
  void* params;
} TfLiteQuantization;

typedef union TfLitePtrUnion {
  int32_t* i32;
  int16_t* i16;
  float* f;
  char* raw;
  const char* raw_const;
  void* data;
} TfLitePtrUnion;

struct TfLiteDelegate;
struct TfLiteRegistration;

typedef struct TfLiteTensor {
  TfLiteType type;
  TfLitePtrUnion data;
  TfLiteIntArray* dims;
  TfLiteQuantizationParams params;
  TfLiteAllocationType allocation_type;
  size_t bytes;
  const void* allocation;
  const char* name;
  struct TfLiteDelegate* delegate;
  int buffer_handle;
  bool data_is_stale;
  bool is_variable;
  TfLiteQuantization quantization;
  void* sparsity;
  const TfLiteIntArray* dims_signature;
} TfLiteTensor;

typedef struct TfLiteNode {
  TfLiteIntArray* inputs;
  TfLiteIntArray* outputs;
  TfLiteIntArray* intermediates;
  TfLiteIntArray* temporaries;
  void* user_data;
  void* builtin_data;
  const void* custom_initial_data;
  int custom_initial_data_size;
  struct TfLiteDelegate* delegate;
  bool might_have_side_effect;
} TfLiteNode;

// Stored as builtin_data of a delegate kernel node and passed to its init().
typedef struct TfLiteDelegateParams {
  struct TfLiteDelegate* delegate;
  TfLiteIntArray* nodes_to_replace;
  TfLiteIntArray* input_tensors;
  TfLiteIntArray* output_tensors;
} TfLiteDelegateParams;

typedef struct TfLiteContext {
  size_t tensors_size;
  TfLiteStatus (*GetExecutionPlan)(struct TfLiteContext* context,
                                   TfLiteIntArray** execution_plan);
  TfLiteTensor* tensors;
  void* impl_;
  // Takes ownership of new_size, which must come from malloc (the runtime free()s it).
  TfLiteStatus (*ResizeTensor)(struct TfLiteContext*, TfLiteTensor* tensor,
                               TfLiteIntArray* new_size);
  void (*ReportError)(struct TfLiteContext*, const char* msg, ...);
  TfLiteStatus (*AddTensors)(struct TfLiteContext*, int tensors_to_add,
                             int* first_new_tensor_index);
  TfLiteStatus (*GetNodeAndRegistration)(struct TfLiteContext*, int node_index,
                                         TfLiteNode** node,
                                         struct TfLiteRegistration** registration);
  // The registration is passed by value: its layout below must match exactly.
  TfLiteStatus (*ReplaceNodeSubsetsWithDelegateKernels)(
      struct TfLiteContext*, struct TfLiteRegistration registration,
      const TfLiteIntArray* nodes_to_replace, struct TfLiteDelegate* delegate);
  int recommended_num_threads;
  // Later members (external contexts, profiler, scratch buffers, ...) are never used by us;
  // the runtime owns this struct, so they need no declaration.
} TfLiteContext;

typedef struct TfLiteRegistration {
  void* (*init)(TfLiteContext* context, const char* buffer, size_t length);
  void (*free)(TfLiteContext* context, void* buffer);
  TfLiteStatus (*prepare)(TfLiteContext* context, TfLiteNode* node);
  TfLiteStatus (*invoke)(TfLiteContext* context, TfLiteNode* node);
  const char* (*profiling_string)(const TfLiteContext* context, const TfLiteNode* node);
  int32_t builtin_code;
  const char* custom_name;
  int version;
  void* registration_external;  // TfLiteOperator*
  void* (*async_kernel)(TfLiteContext* context, TfLiteNode* node);
  uint64_t inplace_operator;
} TfLiteRegistration;

typedef struct TfLiteDelegate {
  void* data_;
  TfLiteStatus (*Prepare)(TfLiteContext* context, struct TfLiteDelegate* delegate);
  TfLiteStatus (*CopyFromBufferHandle)(TfLiteContext* context, struct TfLiteDelegate* delegate,
                                       int buffer_handle, TfLiteTensor* tensor);
  TfLiteStatus (*CopyToBufferHandle)(TfLiteContext* context, struct TfLiteDelegate* delegate,
                                     int buffer_handle, TfLiteTensor* tensor);
  void (*FreeBufferHandle)(TfLiteContext* context, struct TfLiteDelegate* delegate,
                           int* handle);
  int64_t flags;
  void* opaque_delegate_builder;
} TfLiteDelegate;

}  // extern "C"

#endif  // TFLITE_OPS_ABI_TFLITE_ABI_H_
