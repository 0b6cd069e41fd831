// Shared by llamita's AVX-512 VNNI matmuls (q4_vnni.cpp, q4k_vnni.cpp, q8_vnni.cpp): the
// activation side and the bfloat16 conversions, in 512-bit vectors.
//
// Both kernels multiply integer weight codes with activations rounded to int8 per group of 32
// values (llama.cpp's Q8_0 / Q8_1 dot types do the same): per row and group,
//   x ~ d * xq,  d = max|x| / 127,  xq = round-to-nearest-even(x * 127 / max|x|)  in int8,
// so one vpdpbusd does 64 multiply-adds (16 with a float32 FMA on the same port).
#pragma once

#include "common.h"

#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace LLAMITA_OPS {

inline __m512 bf16x16_to_float(__m256i v) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
}

// 16 floats rounded to bfloat16 to nearest even, as torch's float32 -> bfloat16 conversion
// (so a dequantized weight is bit-equal to torch's `.to(bfloat16)`); NaN stays a NaN (0x7FC0).
inline __m256i float_to_bf16x16(__m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
  rounded = _mm512_mask_mov_epi32(rounded, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
  return _mm512_cvtepi32_epi16(rounded);
}

// Stores 16 dequantized weights at `out` (element `index`) as float32 or bfloat16.
inline void store_weights(__m512 w, void* out, int64_t index, bool bf16) {
  if (bf16) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(out) + index), float_to_bf16x16(w));
  } else {
    _mm512_storeu_ps(static_cast<float*>(out) + index, w);
  }
}

// 16 floats of x from float32 or bfloat16 values.
inline __m512 load_x16(const void* x, bool bf16, int64_t at) {
  if (bf16) return bf16x16_to_float(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(x) + at)));
  return _mm512_loadu_ps(static_cast<const float*>(x) + at);
}

// x float32 or bfloat16 (rows, K) -> xq int8 (rows, K); d (rows, K/32) the group scales; qsum
// (rows, K/32) the exact sum of each group's xq (the kernels need it for their weight offsets).
inline void quantize_activations(const void* x, bool bf16, int64_t rows, int64_t K, int8_t* xq,
                                 float* d, int32_t* qsum) {
  const int64_t groups = rows * (K / kGroup);
  for (int64_t i = 0; i < groups; ++i) {
    const __m512 a = load_x16(x, bf16, i * kGroup);
    const __m512 b = load_x16(x, bf16, i * kGroup + 16);
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
    const __m512 inv = _mm512_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
    const __m512i qa = _mm512_cvtps_epi32(_mm512_mul_ps(a, inv));  // round to nearest even
    const __m512i qb = _mm512_cvtps_epi32(_mm512_mul_ps(b, inv));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(xq + i * kGroup), _mm512_cvtsepi32_epi8(qa));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(xq + i * kGroup + 16), _mm512_cvtsepi32_epi8(qb));
    d[i] = amax / 127.0f;
    qsum[i] = _mm512_reduce_add_epi32(_mm512_add_epi32(qa, qb));
  }
}

// The AVX-512 kernels run tiles of up to 8 rows of x: 8 accumulators of 16 rows each.
constexpr int kMaxTile = 8;

}  // namespace LLAMITA_OPS

namespace llamita_vnni = LLAMITA_OPS;
