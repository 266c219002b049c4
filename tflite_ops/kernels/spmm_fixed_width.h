// The body shared by the fixed-width SIMD microkernels (AVX2, AVX-512, NEON), written once over
// a small ISA traits struct and instantiated in each ISA's own file, compiled with that ISA's
// flags. (RVV's vector types are sizeless and cannot live in arrays; rvv.cc has its own body.)
//
// Traits: Vec, kLanes, kTile (multiple of kPass), kPass (positions computed per pass over a
// block's nonzeros, multiple of kLanes), kMaxRows (rows of a block computed per pass,
// bounded by the register file), kChains (independent accumulators that hide FMA latency),
// kMaxAccumulators (registers left for them), Load, Store, Set1, Fma(a, b, acc) = acc + a * b,
// Add, Min, Max.
#ifndef TFLITE_OPS_KERNELS_SPMM_FIXED_WIDTH_H_
#define TFLITE_OPS_KERNELS_SPMM_FIXED_WIDTH_H_

#include "tflite_ops/kernels/sparse_conv.h"

namespace hybrid_sparse {
namespace spmm_internal {

// Rows [r0, r0 + kRows) of block b at positions [p0, p0 + kPass). Every nonzero loads kPass
// inputs once and updates all kRows channels; with few accumulators, several sets take turns
// so that FMA latency is hidden.
template <typename Isa, int kRows>
inline void BlockRows(const SpmmFilter& f, const float* x, int b, int r0, int p0, float* y) {
  using Vec = typename Isa::Vec;
  constexpr int kVecs = Isa::kPass / Isa::kLanes;
  x += p0;
  y += p0;
  // Enough independent accumulator chains to cover FMA latency, within the register file.
  constexpr int kPerSet = kRows * kVecs;
  constexpr int kWanted = (Isa::kChains + kPerSet - 1) / kPerSet;
  constexpr int kFit = Isa::kMaxAccumulators / kPerSet;
  constexpr int kSets = kWanted < kFit ? kWanted : (kFit > 0 ? kFit : 1);
  const int bs = f.block_size;
  const int c0 = b * bs + r0;
  Vec acc[kSets][kRows][kVecs];
#pragma GCC unroll 16
  for (int r = 0; r < kRows; ++r) {
    const Vec v = Isa::Set1(f.bias[c0 + r]);
    const float* yr = y + static_cast<int64_t>(c0 + r) * Isa::kTile;
#pragma GCC unroll 16
    for (int i = 0; i < kVecs; ++i) {
      acc[0][r][i] = f.accumulate ? Isa::Load(yr + i * Isa::kLanes) : v;
#pragma GCC unroll 4
      for (int u = 1; u < kSets; ++u) acc[u][r][i] = Isa::Set1(0.0f);
    }
  }
  const int32_t begin = f.block_begin[b], end = f.block_end[b];
  const int32_t* offset = f.offset;
  const float* w = f.values + r0;
  int32_t j = begin;
  // Nonzero j into accumulator set u.
  const auto step = [&](int32_t jj, int u) __attribute__((always_inline)) {
    const float* xp = x + offset[jj];
    Vec in[kVecs];
#pragma GCC unroll 16
    for (int i = 0; i < kVecs; ++i) in[i] = Isa::Load(xp + i * Isa::kLanes);
    const float* wj = w + static_cast<int64_t>(jj) * bs;
#pragma GCC unroll 16
    for (int r = 0; r < kRows; ++r) {
      const Vec wv = Isa::Set1(wj[r]);
#pragma GCC unroll 16
      for (int i = 0; i < kVecs; ++i) acc[u][r][i] = Isa::Fma(wv, in[i], acc[u][r][i]);
    }
  };
  if (kSets == 1 && kRows == 1) {
    // One accumulator set: four nonzeros per iteration, so that loop control and the
    // loads of the next nonzero's offset do not come between every set of FMAs.
    for (; j + 4 <= end; j += 4) {
#pragma GCC unroll 4
      for (int u = 0; u < 4; ++u) step(j + u, 0);
    }
  }
  for (; j + kSets <= end; j += kSets) {
#pragma GCC unroll 4
    for (int u = 0; u < kSets; ++u) step(j + u, u);
  }
  for (; j < end; ++j) step(j, 0);
  const Vec lo = Isa::Set1(f.min), hi = Isa::Set1(f.max);
#pragma GCC unroll 16
  for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 16
    for (int i = 0; i < kVecs; ++i) {
      Vec v = acc[0][r][i];
#pragma GCC unroll 4
      for (int u = 1; u < kSets; ++u) v = Isa::Add(v, acc[u][r][i]);
      Isa::Store(y + static_cast<int64_t>(c0 + r) * Isa::kTile + i * Isa::kLanes,
                 Isa::Min(Isa::Max(v, lo), hi));
    }
  }
}

template <typename Isa>
inline void SpmmFixedWidth(const SpmmFilter& f, const float* x, float* y) {
  static_assert(Isa::kTile % Isa::kPass == 0 && Isa::kPass % Isa::kLanes == 0, "tile sizes");
  const int bs = f.block_size;
  for (int b = 0; b < f.num_blocks; ++b) {
    for (int p0 = 0; p0 < Isa::kTile; p0 += Isa::kPass) {
      int r0 = 0;
      for (; r0 + Isa::kMaxRows <= bs; r0 += Isa::kMaxRows)
        BlockRows<Isa, Isa::kMaxRows>(f, x, b, r0, p0, y);
      if (Isa::kMaxRows > 2 && r0 + 2 <= bs) {
        BlockRows<Isa, (Isa::kMaxRows > 2 ? 2 : 1)>(f, x, b, r0, p0, y);
        r0 += 2;
      }
      if (r0 < bs) BlockRows<Isa, 1>(f, x, b, r0, p0, y);
    }
  }
}

}  // namespace spmm_internal
}  // namespace hybrid_sparse

#endif  // TFLITE_OPS_KERNELS_SPMM_FIXED_WIDTH_H_
