// Pins the memory layout of our TFLite ABI declarations to the one the pinned runtime uses
// (tensorflow/lite/core/c/common.h, TF 2.21 / LiteRT 2.3, LP64). An accidental edit of
// abi/tflite_abi.h fails here before it corrupts memory inside the interpreter.
#include <cstddef>

#include <gtest/gtest.h>

#include "tflite_ops/abi/tflite_abi.h"

namespace {

#if defined(__LP64__)
TEST(TfLiteAbi, TensorLayout) {
  EXPECT_EQ(sizeof(TfLiteTensor), 112u);  // also observed at run time on x86_64
  EXPECT_EQ(offsetof(TfLiteTensor, data), 8u);
  EXPECT_EQ(offsetof(TfLiteTensor, dims), 16u);
  EXPECT_EQ(offsetof(TfLiteTensor, allocation_type), 32u);
  EXPECT_EQ(offsetof(TfLiteTensor, bytes), 40u);
  EXPECT_EQ(offsetof(TfLiteTensor, name), 56u);
}

TEST(TfLiteAbi, NodeLayout) {
  EXPECT_EQ(offsetof(TfLiteNode, user_data), 32u);
  EXPECT_EQ(offsetof(TfLiteNode, custom_initial_data), 48u);
  EXPECT_EQ(offsetof(TfLiteNode, custom_initial_data_size), 56u);
  EXPECT_EQ(sizeof(TfLiteNode), 80u);
}

TEST(TfLiteAbi, ContextLayout) {
  EXPECT_EQ(offsetof(TfLiteContext, tensors), 16u);
  EXPECT_EQ(offsetof(TfLiteContext, ResizeTensor), 32u);
  EXPECT_EQ(offsetof(TfLiteContext, ReportError), 40u);
  EXPECT_EQ(offsetof(TfLiteContext, GetNodeAndRegistration), 56u);
  EXPECT_EQ(offsetof(TfLiteContext, ReplaceNodeSubsetsWithDelegateKernels), 64u);
  EXPECT_EQ(offsetof(TfLiteContext, recommended_num_threads), 72u);
}

TEST(TfLiteAbi, RegistrationIsPassedByValueSoItsSizeMatters) {
  EXPECT_EQ(offsetof(TfLiteRegistration, builtin_code), 40u);
  EXPECT_EQ(offsetof(TfLiteRegistration, custom_name), 48u);
  EXPECT_EQ(offsetof(TfLiteRegistration, inplace_operator), 80u);
  EXPECT_EQ(sizeof(TfLiteRegistration), 88u);
}

TEST(TfLiteAbi, DelegateLayout) {
  EXPECT_EQ(offsetof(TfLiteDelegate, flags), 40u);
  EXPECT_EQ(sizeof(TfLiteDelegate), 56u);
  EXPECT_EQ(sizeof(TfLiteDelegateParams), 32u);
}
#endif

}  // namespace
