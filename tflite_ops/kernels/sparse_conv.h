// HybridSparseConv2D kernels: plain C++ on raw pointers and shapes, no TFLite types, so that
// every ISA variant, the TFLite binding and the tests share one signature.
//
// File format of the filter (format version 1, shared with python/hybrid_pruning/op_format.py):
//   The filter is a matrix W[out_c][k] with k = (kh * kernel_w + kw) * in_c + ic, i.e. the
//   order of one NHWC input patch. Output channels are grouped in blocks of `block_size`
//   consecutive channels that share one sparsity pattern (block_size 1 = unstructured). W is
//   stored column-compressed by k:
//     col_ptr[k] .. col_ptr[k+1]   the nonzero blocks of column k (col_ptr has num_cols+1)
//     row_block[j]                 which output-channel block nonzero block j belongs to
//     values[j*block_size + r]     the weight of output channel row_block[j]*block_size + r
//
// How the fast variants run it (conv_plan.h): at Prepare the filter is re-packed row-wise, one
// list of nonzeros per output-channel block, each nonzero turned from its patch index k into
// the offset of its input in a channel-major ("CHW"), zero-padded, stride-phase-split copy of
// the input. Output pixels then sit in vector lanes: one nonzero is a broadcast weight times a
// contiguous vector of `tile` input pixels, for every channel of the block (Elsen et al. 2020,
// "Fast Sparse ConvNets"; XNNPACK's f32-spmm). Accumulators stay in registers across a whole
// row of the block, so a nonzero costs one FMA per vector and no accumulator traffic.
#ifndef TFLITE_OPS_KERNELS_SPARSE_CONV_H_
#define TFLITE_OPS_KERNELS_SPARSE_CONV_H_

#include <cstdint>
#include <string>

#include "tflite_ops/kernels/geometry.h"

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

// Whether some tap of a kernel dimension reads stride phase `phase` of the padded input
// (positions phase, phase + stride, ...). The plans pack only the phases read: a 1x1 conv of
// stride 2 reads one in four.
inline bool PhaseRead(int phase, int kernel, int stride, int dilation) {
  for (int k = 0; k < kernel; ++k)
    if (k * dilation % stride == phase) return true;
  return false;
}

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
  float* scratch;           // [num_blocks * block_size]
};

inline float ApplyActivation(float v, Activation act) {
  if (act == Activation::kRelu) return v > 0.0f ? v : 0.0f;
  if (act == Activation::kRelu6) return v < 0.0f ? 0.0f : (v > 6.0f ? 6.0f : v);
  return v;
}

// The portable reference, the definition every optimised variant is tested against: one output
// pixel at a time, walking the input patch column by column and skipping zero (or below
// threshold) activations. Computes output rows [row_begin, row_end) of the flattened
// (batch * out_h) range.
void SparseConvRowsReference(const ConvArgs& args, int row_begin, int row_end);

// The row-wise packed filter a microkernel runs (built by ConvPlan). Block b's nonzeros are
// [block_begin[b], block_end[b]). ConvPlan may split a row into groups of input channels and
// call the microkernel once per group, the later calls accumulating onto y, so that the inputs
// one group touches stay in L1 across all output channels.
struct SpmmFilter {
  int block_size = 1;
  int num_blocks = 0;
  const int32_t* block_begin = nullptr;  // [num_blocks]
  const int32_t* block_end = nullptr;    // [num_blocks]
  const int32_t* offset = nullptr;  // [nonzeros]: input offset in floats, pixel-independent
  const float* values = nullptr;    // [nonzeros * block_size]
  const float* bias = nullptr;      // [num_blocks * block_size], zero-padded
  bool accumulate = false;          // start from y instead of bias
  float min = 0.0f, max = 0.0f;     // output clamp (the fused activation; +-inf until the
                                    // last group)
};

// The microkernel signature every fast variant implements. For one tile of `tile` consecutive
// output positions whose input sits at x (channel-major copy, see conv_plan.h):
//   y[c * tile + i] = clamp(start + sum over nonzeros j of block c/bs of
//                           values[j * bs + c % bs] * x[offset[j] + i]),   i < tile,
// where start is bias[c], or y[c * tile + i] itself when accumulating.
// Reads x only at offsets + [0, tile); y holds num_blocks * block_size rows of `tile` floats.
using SpmmMicrokernelFn = void (*)(const SpmmFilter& filter, const float* x, float* y);

// Tiles: geometry.h (kAvx2, kAvx2Wide, kAvx2Narrow, kAvx512, kAvx512Narrow, kNeon; RVV's
// follows VLEN).
void SpmmAvx2(const SpmmFilter& filter, const float* x, float* y);
void SpmmAvx2Wide(const SpmmFilter& filter, const float* x, float* y);
void SpmmAvx2Narrow(const SpmmFilter& filter, const float* x, float* y);
void SpmmAvx512(const SpmmFilter& filter, const float* x, float* y);
void SpmmAvx512Narrow(const SpmmFilter& filter, const float* x, float* y);
void SpmmNeon(const SpmmFilter& filter, const float* x, float* y);
void SpmmRvv(const SpmmFilter& filter, const float* x, float* y);
int RvvTile();

// The layout changes around the microkernel (NHWC input -> channel-major X, [channel][tile]
// scratch -> NHWC output) are both this transpose:
//   dst[c * dst_stride + p] = src[p * src_stride + c]   for p < rows, c < cols,
// with dst set to 0 where |src| < thresholds[c] (thresholds may be nullptr).
using TransposeFn = void (*)(const float* src, int64_t src_stride, int rows, int cols,
                             const float* thresholds, float* dst, int64_t dst_stride);
void TransposeReference(const float* src, int64_t src_stride, int rows, int cols,
                        const float* thresholds, float* dst, int64_t dst_stride);
void TransposeAvx2(const float* src, int64_t src_stride, int rows, int cols,
                   const float* thresholds, float* dst, int64_t dst_stride);  // 8x8 blocks
void TransposeNeon(const float* src, int64_t src_stride, int rows, int cols,
                   const float* thresholds, float* dst, int64_t dst_stride);  // 4x4 blocks
void TransposeRvv(const float* src, int64_t src_stride, int rows, int cols,
                  const float* thresholds, float* dst, int64_t dst_stride);  // strided loads

// ---- qs8: int8 activations and weights, int32 accumulation (TFLite's per-channel int8 conv).
//
// Filter format (format version 2, dtype int8): the same column-compressed blocks of output
// channels as above, but a column is a group of 4 consecutive input channels at one tap,
// g = (kh * kernel_w + kw) * ceil(in_c / 4) + ic / 4, and a nonzero block holds block_size x 4
// weights: values[(j * block_size + r) * 4 + t] is the weight of output channel
// row_block[j] * block_size + r on input channel 4 * (g % groups) + t (0 past in_c). Four
// input channels are what one lane of the dot-product instructions sums (VNNI vpdpbusd, NEON
// sdot, RISC-V P's packed int8 dot products).
struct Qs8SparseFilter {
  int out_c = 0;
  int num_cols = 0;  // kernel_h * kernel_w * ceil(in_c / 4)
  int block_size = 1;
  int num_blocks = 0;
  int num_nonzero_blocks = 0;
  const int32_t* col_ptr = nullptr;    // [num_cols + 1]
  const int16_t* row_block = nullptr;  // [num_nonzero_blocks]
  const int8_t* values = nullptr;      // [num_nonzero_blocks * block_size * 4]
};

std::string ValidateSparseFilter(const Qs8SparseFilter& filter);

// TFLite's MultiplyByQuantizedMultiplier comes in two roundings, chosen when TFLite is built:
// kDouble (the default: a rounding doubling high multiply, then a rounding right shift) and
// kSingle (TFLITE_SINGLE_ROUNDING: one 64-bit multiply and one rounding shift). They differ by
// one on some outputs.
enum class Rounding : int32_t { kDouble = 0, kSingle = 1 };

// TFLite's QuantizeMultiplier: real = multiplier * 2^(shift - 31), multiplier in [2^30, 2^31).
void QuantizeMultiplier(double real, Rounding rounding, int32_t* multiplier, int32_t* shift);
int32_t MultiplyByQuantizedMultiplier(int32_t x, int32_t multiplier, int32_t shift,
                                      Rounding rounding);

// From the int32 accumulator of output channel c to int8, as TFLite's int8 conv does.
struct Qs8Requantization {
  const int32_t* multiplier = nullptr;  // [out_c]
  const int32_t* shift = nullptr;       // [out_c]
  int32_t output_zero_point = 0;
  int32_t min = -128, max = 127;  // the fused activation, in the output's quantized units
  Rounding rounding = Rounding::kDouble;
};

inline int8_t Requantize(int32_t acc, int c, const Qs8Requantization& q) {
  int32_t v = MultiplyByQuantizedMultiplier(acc, q.multiplier[c], q.shift[c], q.rounding) +
              q.output_zero_point;
  v = v < q.min ? q.min : (v > q.max ? q.max : v);
  return static_cast<int8_t>(v);
}

struct Qs8ConvArgs {
  const ConvShape* shape;
  const Qs8SparseFilter* filter;
  const int8_t* input;  // [batch, in_h, in_w, in_c]
  int32_t input_zero_point;
  const int32_t* bias;  // [out_c] or nullptr
  const Qs8Requantization* requantization;
  int8_t* output;   // [batch, out_h, out_w, out_c]
  int32_t* scratch;  // [num_blocks * block_size]
};

// The definition of the qs8 op, bit-exact with TFLite's reference int8 CONV_2D (at the same
// rounding): acc = bias + sum of w * (x - input_zero_point) over the taps inside the image.
void Qs8SparseConvRowsReference(const Qs8ConvArgs& args, int row_begin, int row_end);

// The qs8 microkernel: like SpmmMicrokernelFn, output positions in vector lanes, but each
// nonzero is a word of 4 int8 weights (one group of input channels) against words of 4 input
// channels, stored as int8 or, for a family with unsigned_input, as uint8 (int8 + 128). The
// correction for that offset o (0 or 128) and for the input zero point is in `bias`:
// bias[c] - (o + input_zero_point) * (sum of channel c's weights).
// A block microkernel takes rows of block_rows (geometry::kQs8BlockRows) channels sharing
// one pattern: nonzero j of row b holds the words values[j * block_rows + r] of channels
// b * block_rows + r, so each input load feeds block_rows dot products.
struct Qs8SpmmFilter {
  int num_channels = 0;                  // a multiple of block_rows
  int block_rows = 1;                    // channels per row: 1, or a block kernel's
  const int32_t* row_begin = nullptr;    // [num_channels / block_rows]
  const int32_t* row_end = nullptr;      // [num_channels / block_rows]
  const int32_t* offset = nullptr;       // [nonzeros]: input offset in words
  const int32_t* values = nullptr;       // [nonzeros * block_rows]: 4 int8 weights each
  const int32_t* bias = nullptr;         // [num_channels], corrected as above
  const Qs8Requantization* requantization = nullptr;  // its arrays [num_channels]
};

// For one tile of `tile` output positions whose packed input words start at x, channel c
// in row b = c / block_rows, r = c % block_rows:
//   y[c * tile + i] = Requantize(bias[c] + sum over row b's nonzeros j of
//                                dot4(values[j * block_rows + r], x[offset[j] + i]))
// Reads x only at offsets + [0, tile). Rows without nonzeros are not written: their results
// are constants (the requantized bias), which the plan writes into y once.
using Qs8SpmmMicrokernelFn = void (*)(const Qs8SpmmFilter& filter, const uint32_t* x, int8_t* y);

struct Qs8Tiling {
  int tile = 0;  // output positions per call; 0: an unused entry
  Qs8SpmmMicrokernelFn microkernel = nullptr;
};

// The qs8 op on matrix tiles (geometry::Qs8Tiles; Intel AMX). The image is packed as int8
// NHWC stride-phase planes (positions a_stride = in_c bytes apart), so the taps of one
// kernel row in one phase are a contiguous run of bytes at every position; runs are cut
// into chunks of chunk_bytes (the last zero-padded in the weights, not in the input: a chunk
// reads on into the next position's bytes, which meet zero weights). An entry is one nonzero
// chunk of a group of channels: the A rows of position q start at a + q * a_stride +
// a_offset[e]; its B tiles hold the group's weights for those bytes as the tile instruction
// takes them (b[(e * 2 + h) * 1024 + (k / 4) * 64 + r * 4 + k % 4] = weight of channel
// group * 32 + 16 * h + r on chunk byte k), halves[e] bit h set where that half has one.
// Empty chunks are not entries: what the pruner removes in whole chunks is skipped.
struct Qs8TileFilter {
  int num_groups = 0;  // ceil(out_c / channels)
  int64_t a_stride = 0;
  const int32_t* entry_begin = nullptr;  // [num_groups]
  const int32_t* entry_end = nullptr;    // [num_groups]
  const int64_t* a_offset = nullptr;     // [entries]
  const uint8_t* halves = nullptr;       // [entries]
  const int8_t* b = nullptr;             // [entries * 2 * 1024]
  const int32_t* bias = nullptr;         // [num_groups * channels]: corrected for the zero point
  const Qs8Requantization* requantization = nullptr;  // its arrays [num_groups * channels]
};

// Blocks [0, num_blocks) of `positions` consecutive positions from a, channel group `group`:
// y[(block * positions + i) * channels + r] = Requantize(bias + sum of chunk dot products)
// of channel group * channels + r at position i of the block.
using Qs8TileMicrokernelFn = void (*)(const Qs8TileFilter& filter, const int8_t* a, int group,
                                      int num_blocks, int8_t* y);
// Its definition in portable C (tests: the tile path's driver on every CPU and under the
// sanitizers).
void Qs8TileReference(const Qs8TileFilter& filter, const int8_t* a, int group, int num_blocks,
                      int8_t* y);
constexpr int kMaxQs8Tilings = geometry::kMaxQs8Tiles;

// The qs8 results' layout change, [channel][position] -> NHWC:
//   dst[p * dst_stride + c] = src[c * src_stride + p]   for c < rows, p < cols.
// It may read up to kQs8TransposeSlack bytes past any row's `cols` (vector loads of a
// block's edge): src must stay readable that far past its last row.
constexpr int kQs8TransposeSlack = 16;
using Qs8TransposeFn = void (*)(const int8_t* src, int src_stride, int rows, int cols,
                                int8_t* dst, int64_t dst_stride);

// One ISA's qs8 family: its microkernels by tile (Qs8ConvPlan picks one per layer), and what
// the driver must know of them.
struct Qs8Kernels {
  const char* name = nullptr;
  Qs8Tiling tilings[kMaxQs8Tilings];
  // Output positions per vector register: a call costs a weight broadcast per nonzero plus a
  // load and a dot product per vector.
  int lanes = 1;
  // Whether the packed input words hold x + 128 (uint8: vpdpbusd's unsigned x signed) or x
  // itself (int8: sdot, smlal, RVV, P). The plan folds the offset into the bias.
  bool unsigned_input = false;
  Qs8TransposeFn transpose = nullptr;  // nullptr: a portable loop
  // For filters in blocks of geometry::kQs8BlockRows channels; none: the plan expands
  // blocks into rows.
  Qs8Tiling block_tilings[kMaxQs8Tilings];
  // Matrix tiles (geometry::kQs8Amx), for layers where the plan expects them to do less
  // work than the vector microkernels; nullptr: none.
  Qs8TileMicrokernelFn tile_microkernel = nullptr;
};

// Families by ISA (each built only for its architecture; see dispatch.cc for which a CPU gets).
extern const Qs8Kernels kQs8Avx512Vnni;  // vpdpbusd, 16-128 positions
extern const Qs8Kernels kQs8Avx2;        // vpmaddwd on bytes widened in place, 8-64 positions
// AVX-512 VNNI's family plus AMX tiles (tdpbssd), for CPUs with AMX-INT8 whose kernel lets
// this process use the tile registers (Qs8AmxUsable asks it, once).
const Qs8Kernels& Qs8Avx512AmxKernels();
bool Qs8AmxUsable();
extern const Qs8Kernels kQs8Neon;        // smull + sadalp (ARMv8.0), 16 and 32 positions
extern const Qs8Kernels kQs8NeonDot;     // sdot (ARMv8.2 dotprod), 16-64 positions
const Qs8Kernels& Qs8RvvKernels();       // vmacc on sign-extended bytes; tiles follow VLEN
extern const Qs8Kernels kQs8RiscvP;      // RISC-V P draft 0.21 pm4adda.b (.insn), 8 and 16
// The P kernel's twin: the same code with pm4adda.b emulated in portable C, so that the
// driver around the P kernel runs (and is tested) on any CPU, qemu included.
extern const Qs8Kernels kQs8PackedTwin;

void Qs8TransposeAvx512(const int8_t* src, int src_stride, int rows, int cols, int8_t* dst,
                        int64_t dst_stride);  // 16x16 blocks in 32 xmm registers
void Qs8TransposeSse2(const int8_t* src, int src_stride, int rows, int cols, int8_t* dst,
                      int64_t dst_stride);  // the same blocks in 16 (AVX2 builds)
// The microkernel's definition, words of int8 or (unsigned_input) uint8 inputs.
void Qs8SpmmReference(const Qs8SpmmFilter& filter, const uint32_t* x, int8_t* y, int tile,
                      bool unsigned_input);

// Every qs8 family this build has and this CPU runs (the P kernel only where built for P
// hardware), for tests and benchmarks.
const Qs8Kernels* const* AvailableQs8Kernels(int* count);

// One microkernel of a variant, with its tile and the filters and convolutions it takes.
// ConvPlan::Build picks, per layer, the tiling and tap layout with the least estimated work.
struct Tiling {
  int tile = 0;  // output positions per call; 0: an unused entry
  SpmmMicrokernelFn microkernel = nullptr;
  // Work of a computed position relative to the variant's first tiling, for unstructured
  // filters and for filters in blocks (a narrow tile loads a weight and an offset for fewer
  // multiply-adds, a wide one for more); 0: does not take them.
  float cost = 1.0f;
  float block_cost = 1.0f;
  bool pointwise = true;  // offered for pointwise (1x1, stride 1) convolutions
  // The alignment, in floats, that keeps its vector loads of unstructured filters within
  // cache lines (their vector width): what aligned taps round the row pitch to; 0: never.
  int aligned_floats = 0;
};

constexpr int kMaxTilings = 3;

struct KernelVariant {
  const char* name;
  TransposeFn transpose;
  // The first is the default tiling; the reference has none (tile 0).
  Tiling tilings[kMaxTilings];
  // Work of an output position of an unstructured filter when every tap's input load is
  // aligned (conv_plan.h), relative to taps at any float offset; 0: never aligned.
  float aligned_tap_cost = 0.0f;
  // Its qs8 family for this CPU; nullptr: int8 layers run the reference.
  const Qs8Kernels* qs8 = nullptr;
};

// Every variant this build has and this CPU can run, reference first, fastest last.
const KernelVariant* AvailableKernels(int* count);

// The fastest available variant, or the one named `name` ("" = fastest); nullptr if unknown.
const KernelVariant* SelectKernel(const char* name);

}  // namespace hybrid_sparse

#endif  // TFLITE_OPS_KERNELS_SPARSE_CONV_H_
