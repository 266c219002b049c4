#include <cstring>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tflite_ops/kernels/sparse_conv.h"
#include "tflite_ops/options.h"

namespace hybrid_sparse {
namespace {

std::vector<uint8_t> Encode(std::vector<int32_t> fields, std::vector<float> thresholds,
                            const char* magic = "HSPC") {
  std::vector<uint8_t> out(magic, magic + 4);
  auto put = [&out](uint32_t u) {
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<uint8_t>(u >> (8 * i)));
  };
  for (int32_t f : fields) put(static_cast<uint32_t>(f));
  for (float t : thresholds) {
    uint32_t u;
    std::memcpy(&u, &t, 4);
    put(u);
  }
  return out;
}

// version, kh, kw, in_c, out_c, sh, sw, dh, dw, padding, activation, block, num_thresholds
std::vector<int32_t> Good() { return {1, 3, 3, 2, 8, 1, 1, 1, 1, 0, 1, 4, 2}; }

std::string Parse(const std::vector<uint8_t>& bytes, ConvOptions* o = nullptr) {
  ConvOptions tmp;
  return ParseConvOptions(bytes.data(), bytes.size(), o ? o : &tmp);
}

TEST(Options, ParsesValidOptions) {
  ConvOptions o;
  ASSERT_EQ(Parse(Encode(Good(), {0.25f, 0.5f}), &o), "");
  EXPECT_EQ(o.kernel_h, 3);
  EXPECT_EQ(o.in_channels, 2);
  EXPECT_EQ(o.out_channels, 8);
  EXPECT_EQ(o.activation, Activation::kRelu);
  EXPECT_EQ(o.block_size, 4);
  ASSERT_EQ(o.thresholds.size(), 2u);
  EXPECT_FLOAT_EQ(o.thresholds[1], 0.5f);
}

// Format version 2: the v1 fields, then dtype and rounding.
std::vector<int32_t> GoodV2(int32_t dtype, int32_t rounding, int32_t num_thresholds) {
  std::vector<int32_t> f = Good();
  f[0] = 2;
  f[12] = num_thresholds;
  f.push_back(dtype);
  f.push_back(rounding);
  return f;
}

TEST(Options, ParsesVersion2WithItsDtypeAndRounding) {
  ConvOptions o;
  ASSERT_EQ(Parse(Encode(GoodV2(1, 1, 0), {}), &o), "");
  EXPECT_EQ(o.dtype, DataType::kInt8);
  EXPECT_EQ(o.rounding, Rounding::kSingle);
  ASSERT_EQ(Parse(Encode(GoodV2(0, 0, 2), {0.25f, 0.5f}), &o), "");
  EXPECT_EQ(o.dtype, DataType::kFloat32);
  ASSERT_EQ(o.thresholds.size(), 2u);
  EXPECT_FLOAT_EQ(o.thresholds[1], 0.5f);
  // Version 1 is float32 with the default rounding.
  ASSERT_EQ(Parse(Encode(Good(), {0.25f, 0.5f}), &o), "");
  EXPECT_EQ(o.dtype, DataType::kFloat32);
  const std::vector<uint8_t> v2 = Encode(GoodV2(1, 0, 0), {});
  for (size_t n = 0; n < v2.size(); ++n) {
    std::vector<uint8_t> cut(v2.begin(), v2.begin() + n);
    EXPECT_NE(Parse(cut), "") << "accepted " << n << " bytes";
  }
}

TEST(Options, Version2NamesBadDtypeRoundingAndInt8Thresholds) {
  EXPECT_NE(Parse(Encode(GoodV2(2, 0, 0), {})).find("dtype = 2"), std::string::npos);
  EXPECT_NE(Parse(Encode(GoodV2(1, 5, 0), {})).find("rounding = 5"), std::string::npos);
  EXPECT_NE(Parse(Encode(GoodV2(1, 0, 2), {0.25f, 0.5f})).find("int8 takes no activation"),
            std::string::npos);
  std::vector<int32_t> v3 = GoodV2(0, 0, 0);
  v3[0] = 3;
  EXPECT_NE(Parse(Encode(v3, {})).find("format_version 3"), std::string::npos);
}

TEST(Options, RejectsEveryTruncation) {
  const std::vector<uint8_t> good = Encode(Good(), {0.25f, 0.5f});
  for (size_t n = 0; n < good.size(); ++n) {
    std::vector<uint8_t> cut(good.begin(), good.begin() + n);  // exact size: ASan sees overreads
    EXPECT_NE(Parse(cut), "") << "accepted " << n << " bytes";
  }
  ConvOptions o;
  EXPECT_NE(ParseConvOptions(nullptr, 100, &o), "");
}

TEST(Options, RejectsTrailingBytes) {
  std::vector<uint8_t> bytes = Encode(Good(), {0.25f, 0.5f});
  bytes.push_back(0);
  EXPECT_NE(Parse(bytes), "");
}

TEST(Options, NamesTheBadField) {
  struct Bad {
    int index;
    int32_t value;
    const char* expected;
  };
  const Bad cases[] = {
      {0, 3, "format_version"}, {1, 0, "kernel_h"},     {2, -3, "kernel_w"},
      {3, 0, "in_channels"},    {4, 1 << 20, "out_channels"}, {5, 0, "stride_h"},
      {8, 0, "dilation_w"},     {9, 2, "padding"},      {10, 3, "activation"},
      {11, 0, "block_size"},    {11, 65, "block_size"}, {12, 1, "num_thresholds"},
  };
  for (const Bad& b : cases) {
    std::vector<int32_t> fields = Good();
    fields[b.index] = b.value;
    const int n_thr = fields[12];
    const std::string err = Parse(Encode(fields, std::vector<float>(n_thr > 0 && n_thr < 64 ? n_thr : 0, 0.1f)));
    EXPECT_NE(err.find(b.expected), std::string::npos) << "field " << b.index << ": " << err;
  }
  EXPECT_NE(Parse(Encode(Good(), {0.25f, 0.5f}, "XXXX")).find("magic"), std::string::npos);
  EXPECT_NE(Parse(Encode(Good(), {-1.0f, 0.5f})).find("threshold[0]"), std::string::npos);
}

TEST(SparseFilter, ValidationCatchesBadIndices) {
  // out_c 4, block 2 -> 2 blocks; 3 columns.
  std::vector<int32_t> col_ptr = {0, 1, 1, 3};
  std::vector<int16_t> row_block = {1, 0, 1};
  std::vector<float> values(6, 1.0f);
  SparseFilter f;
  f.out_c = 4, f.num_cols = 3, f.block_size = 2, f.num_blocks = 2, f.num_nonzero_blocks = 3;
  f.col_ptr = col_ptr.data(), f.row_block = row_block.data(), f.values = values.data();
  EXPECT_EQ(ValidateSparseFilter(f), "");
  row_block[0] = 2;
  EXPECT_NE(ValidateSparseFilter(f).find("out of range"), std::string::npos);
  row_block[0] = -1;
  EXPECT_NE(ValidateSparseFilter(f).find("out of range"), std::string::npos);
  row_block[0] = 1;
  row_block[2] = 0;  // column 2 lists block 0 after block 0
  EXPECT_NE(ValidateSparseFilter(f).find("strictly increasing"), std::string::npos);
  row_block[2] = 1;
  col_ptr[2] = 4;
  EXPECT_NE(ValidateSparseFilter(f), "");
  col_ptr[2] = 1;
  col_ptr[0] = 1;
  EXPECT_NE(ValidateSparseFilter(f).find("col_ptr[0]"), std::string::npos);
  col_ptr[0] = 0;
  f.num_blocks = 3;
  EXPECT_NE(ValidateSparseFilter(f).find("num_blocks"), std::string::npos);
}

}  // namespace
}  // namespace hybrid_sparse
