// GGML Q4_K weights on AVX-512 VNNI in (nearly) their own size: layout "vnni_k".
//
// Why a second 4-bit layout: the "vnni" layout (q4_vnni.cpp) keeps a bfloat16 scale and zero per
// 32 weights, 5.0 bits a weight. Q4_K itself spends 4.5: per 256 weights an f16 d and dmin and
// 6-bit scales sc and mins m per 32. Decode is memory-bound, so on an 8B Q4_K_M model that half
// bit is ~0.3 GB more read per token (docs/performance.md). This layout keeps Q4_K's own numbers,
// sc and m as one byte each and d, dmin as f16: 4.625 bits. It is also exact: W = (d sc) q -
// (dmin m) with d sc and dmin m exact in float32 (11-bit times 6-bit significands), the very
// weights GGML and the gguf package dequantize to, where "vnni" rounds d sc to bfloat16.
//
// Numerics: as q4_vnni.cpp with s = d sc and z - 8 s = -dmin m, that is
//   y[m, n] = sum_g  (s d_x) * sum_k q xq  -  (dmin m) * (d_x * sum_k xq)
// (d_x, xq: the activations quantized per 32, vnni.h).
//
// Layout (private, built by kernels/int4.py `_vnni_k_meta`):
//   codes uint8 (N, K/2): exactly the "vnni" codes (16-row blocks, [g][c][64]).
//   meta uint8 (N/16, K/256, 320): per 16-row block and super-block of 256 weights, 128 bytes
//   sc[j][r] (sub-block j = 0..7 of 32 weights, row r = 0..15), 128 bytes m[j][r], then 16 f16
//   d[r] and 16 f16 dmin[r] (little-endian). One 16-byte load is one sub-block's 16 rows.
// Blocks are contiguous in both, so whole 16-row blocks slice and concatenate exactly.

#include "vnni.h"

#include <ATen/core/Tensor.h>
#include <immintrin.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>

namespace {

using llamita_vnni::kBlockRows;
using llamita_vnni::kGroup;

using llamita_vnni::kDAt;
using llamita_vnni::kDminAt;
using llamita_vnni::kMetaBytes;
using llamita_vnni::kMinsAt;
using llamita_vnni::kSubBlocks;
using llamita_vnni::kSuper;

// 16 bytes (one sub-block's sc or m for 16 rows) as float32.
inline __m512 bytes_to_float(const uint8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}

inline __m512 halves_to_float(const uint8_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// One block of 16 output rows for ROWS rows of x (as Q4Block in q4_vnni.cpp).
template <int ROWS>
struct Q4KBlock {
  static void run(const int8_t* xq, const float* d, const int32_t* qsum, int64_t K,
                  const uint8_t* codes, const uint16_t* meta16, float* y, int64_t ldy) {
    const uint8_t* meta = reinterpret_cast<const uint8_t*>(meta16);
    const int64_t groups = K / kGroup;
    const __m512i low_nibble = _mm512_set1_epi8(0x0F);
    __m512 total[ROWS];
    for (int m = 0; m < ROWS; ++m) total[m] = _mm512_setzero_ps();
    // One loop over groups, as Q4Block's: a super-block outer loop around it compiled to 13%
    // slower code at 8 rows of x (registers spilled), for two reloads per group saved.
    for (int64_t g = 0; g < groups; ++g) {
      __m512i dot[ROWS];
      for (int m = 0; m < ROWS; ++m) dot[m] = _mm512_setzero_si512();
      const uint8_t* chunk = codes + g * kBlockRows * kGroup / 2;
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) {
        llamita_vnni::prefetch_ahead(chunk + c * 64);
        const __m512i v = _mm512_loadu_si512(chunk + c * 64);
        const __m512i lo = _mm512_and_si512(v, low_nibble);
        const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low_nibble);
        for (int m = 0; m < ROWS; ++m) {
          const int8_t* xm = xq + m * K + g * kGroup + c * 8;
          dot[m] = _mm512_dpbusd_epi32(dot[m], lo, _mm512_set1_epi32(*reinterpret_cast<const int32_t*>(xm)));
          dot[m] = _mm512_dpbusd_epi32(dot[m], hi, _mm512_set1_epi32(*reinterpret_cast<const int32_t*>(xm + 4)));
        }
      }
      const uint8_t* mb = meta + (g / kSubBlocks) * kMetaBytes;
      const int64_t j = g % kSubBlocks;
      const __m512 s = _mm512_mul_ps(bytes_to_float(mb + kBlockRows * j), halves_to_float(mb + kDAt));  // d sc
      const __m512 mins = _mm512_mul_ps(bytes_to_float(mb + kMinsAt + kBlockRows * j),
                                        halves_to_float(mb + kDminAt));  // dmin m
      for (int m = 0; m < ROWS; ++m) {
        const float dm = d[m * groups + g];
        total[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[m]), _mm512_mul_ps(s, _mm512_set1_ps(dm)), total[m]);
        const float xs = dm * static_cast<float>(qsum[m * groups + g]);  // d_x * sum xq
        total[m] = _mm512_fnmadd_ps(mins, _mm512_set1_ps(xs), total[m]);
      }
    }
    for (int m = 0; m < ROWS; ++m) _mm512_storeu_ps(y + m * ldy, total[m]);
  }
};

at::Tensor q4k_vnni_mm(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& meta) {
  return llamita_vnni::q4k_mm<Q4KBlock, llamita_vnni::kMaxTile>(x, codes, meta, llamita_vnni::quantize_activations);
}

// The dense weight (N, K) in float32 or bfloat16: W = q (d sc) - dmin m as one fused
// multiply-subtract; q (d sc) is exact in float32, so this rounds once, as GGML's mul-then-sub.
at::Tensor q4k_vnni_dequantize(const at::Tensor& codes, const at::Tensor& meta, at::ScalarType dtype) {
  const int64_t N = codes.size(0), K = codes.size(1) * 2;
  at::Tensor out = llamita_vnni::dequantized_q4k(codes, meta, dtype);
  const uint8_t* cp = codes.data_ptr<uint8_t>();
  const uint8_t* mp = meta.data_ptr<uint8_t>();
  void* op = out.data_ptr();
  const bool bf16 = dtype == at::kBFloat16;
  const int64_t supers = K / kSuper;
  at::parallel_for(0, N / kBlockRows, 1, [&](int64_t b0, int64_t b1) {
    const __m128i low_nibble = _mm_set1_epi8(0x0F);
    alignas(64) float s[kBlockRows], mins[kBlockRows];
    for (int64_t b = b0; b < b1; ++b) {
      for (int64_t sb = 0; sb < supers; ++sb) {
        const uint8_t* mb = mp + (b * supers + sb) * kMetaBytes;
        const __m512 dd = halves_to_float(mb + kDAt), dmin = halves_to_float(mb + kDminAt);
        for (int j = 0; j < kSubBlocks; ++j) {
          const int64_t g = sb * kSubBlocks + j;
          _mm512_store_ps(s, _mm512_mul_ps(bytes_to_float(mb + kBlockRows * j), dd));
          _mm512_store_ps(mins, _mm512_mul_ps(bytes_to_float(mb + kMinsAt + kBlockRows * j), dmin));
          const uint8_t* chunk = cp + b * kBlockRows * K / 2 + g * kBlockRows * kGroup / 2;
          for (int r = 0; r < kBlockRows; ++r) {
            // Row r's 4 bytes of each chunk, interleaved low/high to put k in order (as in
            // q4_vnni_dequantize).
            int32_t piece[4];
            for (int c = 0; c < 4; ++c) std::memcpy(&piece[c], chunk + c * 64 + 4 * r, 4);
            const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(piece));
            const __m128i lo = _mm_and_si128(v, low_nibble);
            const __m128i hi = _mm_and_si128(_mm_srli_epi16(v, 4), low_nibble);
            const __m512 sr = _mm512_set1_ps(s[r]), mr = _mm512_set1_ps(mins[r]);
            const int64_t at = (b * kBlockRows + r) * K + g * kGroup;
            for (int half = 0; half < 2; ++half) {
              const __m128i q = half == 0 ? _mm_unpacklo_epi32(lo, hi) : _mm_unpackhi_epi32(lo, hi);
              const __m512 qf = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(q));
              llamita_vnni::store_weights(_mm512_fmsub_ps(qf, sr, mr), op, at + 16 * half, bf16);
            }
          }
        }
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(LLAMITA_OPS, m) {
  m.def("q4k_vnni_mm(Tensor x, Tensor codes, Tensor meta) -> Tensor");
  m.def("q4k_vnni_dequantize(Tensor codes, Tensor meta, ScalarType dtype) -> Tensor");
}
TORCH_LIBRARY_IMPL(LLAMITA_OPS, CPU, m) {
  m.impl("q4k_vnni_mm", q4k_vnni_mm);
  m.impl("q4k_vnni_dequantize", q4k_vnni_dequantize);
}
