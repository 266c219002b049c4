// qs8 on Intel AMX tiles: tdpbssd multiplies 16 positions x 64 int8 input bytes (tile A, rows
// a_stride apart in the packed image) by 64 bytes x 16 channels of int8 weights (tile B) into
// 16 x 16 int32 sums. A call computes blocks of 32 positions x 32 channels as 2 x 2 tiles, so
// each A and B tile loaded feeds two products. Sums go through memory (tiles have no lanes to
// requantize) and are requantized per channel across the vector lanes.
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>

#include "tflite_ops/kernels/geometry.h"
#include "tflite_ops/kernels/sparse_conv.h"

namespace hybrid_sparse {
namespace {

constexpr int kPositions = geometry::kQs8Amx.positions;
constexpr int kChannels = geometry::kQs8Amx.channels;
static_assert(kPositions == 32 && kChannels == 32 && geometry::kQs8Amx.chunk_bytes == 64,
              "the kernel is written for 2 x 2 tiles of 16 rows x 64 bytes");

struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// TFLite's requantization with each lane its own channel (qs8_avx512vnni.cc's identities,
// its per-channel constants as vectors; variable shifts where it shifts by a count).
class LaneRequantization {
 public:
  LaneRequantization(const int32_t* multiplier, const int32_t* shift, Rounding rounding)
      : single_(rounding == Rounding::kSingle) {
    m_ = _mm512_loadu_si512(multiplier);
    m_odd_ = _mm512_srli_epi64(m_, 32);
    const __m512i s = _mm512_loadu_si512(shift);
    const __m512i zero = _mm512_setzero_si512(), one = _mm512_set1_epi32(1);
    if (single_) {
      const __m512i total = _mm512_sub_epi32(_mm512_set1_epi32(31), s);
      total_even_ = _mm512_and_si512(total, _mm512_set1_epi64(0xffffffff));
      total_odd_ = _mm512_srli_epi64(total, 32);
      const __m512i one64 = _mm512_set1_epi64(1);
      round_even_ = _mm512_sllv_epi64(one64, _mm512_sub_epi64(total_even_, one64));
      round_odd_ = _mm512_sllv_epi64(one64, _mm512_sub_epi64(total_odd_, one64));
      return;
    }
    left_ = _mm512_max_epi32(s, zero);
    any_left_ = _mm512_test_epi32_mask(left_, left_) != 0;
    right_ = _mm512_max_epi32(_mm512_sub_epi32(zero, s), zero);
    shifted_ = _mm512_cmpgt_epi32_mask(right_, zero);
    round32_ = _mm512_maskz_sllv_epi32(shifted_, one, _mm512_sub_epi32(right_, one));
  }

  __m512i operator()(__m512i acc) const {
    if (single_) {
      const __m512i even = _mm512_mul_epi32(acc, m_);
      const __m512i odd = _mm512_mul_epi32(_mm512_srli_epi64(acc, 32), m_odd_);
      return Interleave(_mm512_srav_epi64(_mm512_add_epi64(even, round_even_), total_even_),
                        _mm512_srav_epi64(_mm512_add_epi64(odd, round_odd_), total_odd_));
    }
    if (any_left_) acc = _mm512_sllv_epi32(acc, left_);
    const __m512i nudge = _mm512_set1_epi64(int64_t{1} << 30);
    const __m512i even = _mm512_mul_epi32(acc, m_);
    const __m512i odd = _mm512_mul_epi32(_mm512_srli_epi64(acc, 32), m_odd_);
    const __m512i high = Interleave(_mm512_srai_epi64(_mm512_add_epi64(even, nudge), 31),
                                    _mm512_srai_epi64(_mm512_add_epi64(odd, nudge), 31));
    // Lanes with a right shift round (ties away from zero); the others keep high as it is.
    const __m512i rounded = _mm512_mask_add_epi32(
        high, shifted_, high, _mm512_add_epi32(round32_, _mm512_srai_epi32(high, 31)));
    return _mm512_srav_epi32(rounded, right_);
  }

 private:
  static __m512i Interleave(__m512i even, __m512i odd) {
    return _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
  }

  bool single_;
  __m512i m_, m_odd_;
  __m512i total_even_{}, total_odd_{}, round_even_{}, round_odd_{};
  __m512i left_{}, right_{}, round32_{};
  __mmask16 shifted_ = 0;
  bool any_left_ = false;  // multipliers above 1 (rare): a left shift first
};

void Qs8TilesAmx(const Qs8TileFilter& f, const int8_t* a, int group, int num_blocks,
                 int8_t* y) {
  TileConfig config;
  for (int t = 0; t < 8; ++t) {
    config.rows[t] = 16;
    config.colsb[t] = 64;
  }
  _tile_loadconfig(&config);
  const Qs8Requantization& q = *f.requantization;
  const int c0 = group * kChannels;
  const LaneRequantization requantize[2] = {
      {q.multiplier + c0, q.shift + c0, q.rounding},
      {q.multiplier + c0 + 16, q.shift + c0 + 16, q.rounding}};
  const __m512i bias[2] = {_mm512_loadu_si512(f.bias + c0), _mm512_loadu_si512(f.bias + c0 + 16)};
  const __m512i zero_point = _mm512_set1_epi32(q.output_zero_point);
  const __m512i lo = _mm512_set1_epi32(q.min), hi = _mm512_set1_epi32(q.max);
  // No fused activation, or a ReLU whose output zero point is -128: the clamp is int8's own
  // range, which the saturating narrow applies.
  const bool saturate = q.min == -128 && q.max == 127;
  const int64_t stride = f.a_stride;
  alignas(64) int32_t sums[kPositions * kChannels];
  for (int block = 0; block < num_blocks; ++block) {
    const int8_t* a0 = a + block * kPositions * stride;
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int32_t e = f.entry_begin[group]; e < f.entry_end[group]; ++e) {
      const int8_t* rows = a0 + f.a_offset[e];
      const int8_t* b = f.b + static_cast<size_t>(e) * 2048;
      _tile_loadd(4, rows, stride);
      _tile_loadd(5, rows + 16 * stride, stride);
      const int halves = f.halves[e];
      if (halves & 1) {
        _tile_loadd(6, b, 64);
        _tile_dpbssd(0, 4, 6);
        _tile_dpbssd(2, 5, 6);
      }
      if (halves & 2) {
        _tile_loadd(7, b + 1024, 64);
        _tile_dpbssd(1, 4, 7);
        _tile_dpbssd(3, 5, 7);
      }
    }
    // sums[position][channel]: tile (m, h) holds positions 16m.., channels 16h...
    _tile_stored(0, sums, kChannels * 4);
    _tile_stored(1, sums + 16, kChannels * 4);
    _tile_stored(2, sums + 16 * kChannels, kChannels * 4);
    _tile_stored(3, sums + 16 * kChannels + 16, kChannels * 4);
    int8_t* out = y + block * kPositions * kChannels;
    for (int i = 0; i < kPositions; ++i)
      for (int h = 0; h < 2; ++h) {
        const __m512i acc = _mm512_add_epi32(_mm512_load_si512(sums + i * kChannels + 16 * h),
                                             bias[h]);
        __m512i r = _mm512_add_epi32(requantize[h](acc), zero_point);
        if (!saturate) r = _mm512_min_epi32(_mm512_max_epi32(r, lo), hi);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i * kChannels + 16 * h),
                         _mm512_cvtsepi32_epi8(r));
      }
  }
  // The tile state costs every context switch 8 KB of saving: leave none behind.
  _tile_release();
}

}  // namespace

bool Qs8AmxUsable() {
  static const bool usable = [] {
    if (!__builtin_cpu_supports("amx-tile") || !__builtin_cpu_supports("amx-int8") ||
        !__builtin_cpu_supports("avx512bw"))
      return false;
    // Linux keeps the tile data off until a process asks (arch_prctl ARCH_REQ_XCOMP_PERM for
    // XFEATURE_XTILEDATA); a kernel without it refuses, and the vector family runs instead.
    constexpr int kReqXcompPerm = 0x1023, kXtileData = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXtileData) == 0;
  }();
  return usable;
}

const Qs8Kernels& Qs8Avx512AmxKernels() {
  static const Qs8Kernels family = [] {
    Qs8Kernels k = kQs8Avx512Vnni;
    k.name = geometry::kQs8Amx.name;
    k.tile_microkernel = Qs8TilesAmx;
    return k;
  }();
  return family;
}

}  // namespace hybrid_sparse
