// Every ISA's microkernel geometry, defined once for all architectures: the ISA files build
// their microkernels from it, dispatch.cc's variant table takes its tiles from it, and the
// plugin exports it (GeometryJson, hybrid_sparse_kernel_geometry) so that the analytic model
// (python/hybrid_pruning/targets.py) prices each device by the numbers its kernels are built
// with, the ISAs this build lacks included.
#ifndef TFLITE_OPS_KERNELS_GEOMETRY_H_
#define TFLITE_OPS_KERNELS_GEOMETRY_H_

#include <string>

namespace hybrid_sparse {
namespace geometry {

// A float32 microkernel: `tile` output positions per call, computed `pass` positions and up
// to `max_rows` channels of a block at a time, in vectors of `lanes` floats.
struct F32 {
  const char* name;
  int lanes, tile, pass, max_rows;
};

inline constexpr F32 kAvx2{"avx2", 8, 64, 32, 2};
inline constexpr F32 kAvx2Unstructured{"avx2_unstructured", 8, 64, 64, 1};
inline constexpr F32 kAvx2Wide{"avx2_wide", 8, 112, 112, 1};
inline constexpr F32 kAvx2Narrow{"avx2_narrow", 8, 32, 32, 2};
inline constexpr F32 kAvx512{"avx512", 16, 64, 64, 4};
inline constexpr F32 kAvx512Narrow{"avx512_narrow", 16, 32, 32, 4};
inline constexpr F32 kNeon{"neon", 4, 16, 16, 4};
// RVV is vector-length agnostic: a tile is one LMUL group of 32-bit lanes, VLEN / 32 * LMUL
// positions, for float32 and int8 alike.
inline constexpr int kRvvLmul = 4;
inline constexpr int kRvvMaxRows = 4;

// An int8 (qs8) family: `lanes` positions per vector, one microkernel per tile; block_tiles:
// its microkernels for filters in blocks of kQs8BlockRows output channels (none: the plan
// runs such a filter row by row).
inline constexpr int kMaxQs8Tiles = 8;
inline constexpr int kQs8BlockRows = 4;
struct Qs8 {
  const char* name;
  int lanes;
  int tiles[kMaxQs8Tiles];  // 0: unused
  int block_tiles[kMaxQs8Tiles] = {};
};

// A block's 4 x vectors accumulators stay within the 32 zmm registers up to 64 positions.
inline constexpr Qs8 kQs8Avx512Vnni{
    "avx512vnni", 16, {16, 32, 48, 64, 80, 96, 112, 128}, {16, 32, 48, 64}};
// A block's 4 x vectors accumulators and its split inputs in the 16 ymm registers: up to 16.
inline constexpr Qs8 kQs8Avx2{"avx2", 8, {8, 16, 24, 32, 40, 48, 56, 64}, {8, 16}};
inline constexpr Qs8 kQs8Neon{"neon", 4, {16, 32}};
// A block's 4 x vectors accumulators, its loads and weights in the 32 q registers: up to 24.
inline constexpr Qs8 kQs8NeonDot{"neondot", 4, {16, 32, 48, 64}, {8, 16, 24}};
inline constexpr Qs8 kQs8RiscvP{"riscv-p", 2, {8, 16}};

// An int8 family on matrix tiles (Intel AMX: 16 rows x 64 bytes; one tdpbssd multiplies 16
// positions x 64 input bytes by 64 bytes x 16 channels): a call computes blocks of
// `positions` x `channels` as 2 x 2 int32 tiles, over chunks of `chunk_bytes` input bytes.
struct Qs8Tiles {
  const char* name;
  int positions, channels, chunk_bytes;
};
inline constexpr Qs8Tiles kQs8Amx{"avx512amx", 32, 32, 64};

// All of the above as JSON: {"f32": {name: {lanes, tile, pass, max_rows}}, "qs8": {name:
// {lanes, tiles, block_tiles}}, "qs8_block_rows": rows, "rvv": {lmul, max_rows}}.
std::string GeometryJson();

}  // namespace geometry
}  // namespace hybrid_sparse

#endif  // TFLITE_OPS_KERNELS_GEOMETRY_H_
