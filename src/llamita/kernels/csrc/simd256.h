// 256-bit helpers shared by the AVX2 and AVX-VNNI kernels (mm256.cpp) and by the load-time
// packing every level compiles (pack.cpp): bfloat16 conversions and the activation side.
//
// Activations are quantized as in vnni.h, to the same bytes: per row and group of 32,
//   x ~ d * xq,  d = max|x| / 127,  xq = round-to-nearest-even(x * 127 / max|x|)  in int8.
#pragma once

#include "common.h"

#include <immintrin.h>

#include <cstdint>

namespace LLAMITA_OPS {

inline __m256 bf16x8_to_float(__m128i v) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
}

// 8 floats rounded to bfloat16 to nearest even, as torch's float32 -> bfloat16 conversion;
// NaN stays a NaN (0x7FC0). The same bits as vnni.h's float_to_bf16x16.
inline __m128i float_to_bf16x8(__m256 v) {
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
  const __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
  rounded = _mm256_blendv_epi8(rounded, _mm256_set1_epi32(0x7FC0), _mm256_castps_si256(nan));
  // Every lane is <= 0xFFFF, so the unsigned saturating pack keeps it exactly.
  return _mm_packus_epi32(_mm256_castsi256_si128(rounded), _mm256_extracti128_si256(rounded, 1));
}

// Stores 8 dequantized weights at `out` (element `index`) as float32 or bfloat16.
inline void store_weights8(__m256 w, void* out, int64_t index, bool bf16) {
  if (bf16) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(out) + index), float_to_bf16x8(w));
  } else {
    _mm256_storeu_ps(static_cast<float*>(out) + index, w);
  }
}

// 8 floats of x from float32 or bfloat16 values.
inline __m256 load_x8(const void* x, bool bf16, int64_t at) {
  if (bf16) return bf16x8_to_float(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(x) + at)));
  return _mm256_loadu_ps(static_cast<const float*>(x) + at);
}

inline float hmax8(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

inline int32_t hsum8_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

// x float32 or bfloat16 (rows, K) -> xq int8 (rows, K); d (rows, K/32) the group scales; qsum
// (rows, K/32) the exact sum of each group's xq (as vnni.h's, to the same values).
inline void quantize_activations(const void* x, bool bf16, int64_t rows, int64_t K, int8_t* xq,
                                 float* d, int32_t* qsum) {
  const int64_t groups = rows * (K / kGroup);
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  // packs_epi32 / packs_epi16 interleave the two 128-bit lanes; this puts the bytes back in order.
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int64_t i = 0; i < groups; ++i) {
    __m256 v[4];
    for (int j = 0; j < 4; ++j) v[j] = load_x8(x, bf16, i * kGroup + 8 * j);
    const __m256 m01 = _mm256_max_ps(_mm256_and_ps(v[0], abs_mask), _mm256_and_ps(v[1], abs_mask));
    const __m256 m23 = _mm256_max_ps(_mm256_and_ps(v[2], abs_mask), _mm256_and_ps(v[3], abs_mask));
    const float amax = hmax8(_mm256_max_ps(m01, m23));
    const __m256 inv = _mm256_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
    __m256i q[4];
    for (int j = 0; j < 4; ++j) q[j] = _mm256_cvtps_epi32(_mm256_mul_ps(v[j], inv));  // nearest even
    const __m256i q16 = _mm256_packs_epi32(q[0], q[1]), r16 = _mm256_packs_epi32(q[2], q[3]);
    const __m256i q8 = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(q16, r16), order);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(xq + i * kGroup), q8);
    d[i] = amax / 127.0f;
    qsum[i] = hsum8_epi32(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
  }
}

}  // namespace LLAMITA_OPS
