// GGML Q6_K weights on AVX-512 VNNI in their own size: layout "vnni_q6k" (common.h).
//
// Why: Q6_K is the 8B Q4_K_M's output projection and half its ffn_down. Re-quantized to int8
// per row (kernels/int8.py) it took 8.1 bits a weight and changed the numbers; here it keeps its
// own 6.5625 bits and its own weights W = d sc (q - 32) (d f16 per 256 weights and row, sc int8
// per 16, q in 0..63), as llama.cpp's ggml_vec_dot_q6_K_q8_K multiplies them.
//
// Numerics: activations quantized to int8 per 32 (vnni.h), sums of xq per 16 (common.h). Per
// group g of 32 k and weight row n, with sub-blocks j = 0, 1 of 16:
//   isum = sum_j sc_j * (sum_k q xq  -  32 * sum_k xq)        exact in int32 (|isum| < 2^25)
//   y[m, n] = sum_g float(isum) * (d_w[n] * d_x[m, g])         in float32, g in order
// The 256-bit kernels (mm256.cpp) do the same operations in the same order: every level returns
// the same bits.
//
// Layout: codes uint8 (N, 3K/4), per 16-row block and group 384 bytes: 4 x 64 of low nibbles
// (the "vnni" 4-bit chunks: byte 4r + j of chunk c holds k = 8c + j low, 8c + 4 + j high), then
// 2 x 64 of top bits (chunk h: byte 4r + j holds, 2 bits each from bit 0, the top bits of
// k = 16h + j, 16h + 4 + j, 16h + 8 + j, 16h + 12 + j); so chunk c's top bits are in chunk c / 2
// at bits 4 (c % 2) and 4 (c % 2) + 2, and sub-block j of the group is chunks 2j, 2j + 1.
// meta uint8 (N/16, K/256, 288): int8 sc[16 sub-blocks][16 rows], then f16 d[16 rows].
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
using llamita_vnni::kQ6DAt;
using llamita_vnni::kQ6GroupBytes;
using llamita_vnni::kQ6MetaBytes;
using llamita_vnni::kSuper;

constexpr int64_t kGroupsPerSuper = kSuper / kGroup;

// Independent integer chains per row of x: one per chunk for tiles of 1-2 rows (a vpdpbusd
// chain's latency would otherwise bound the GEMV), one per sub-block from 4 rows on.
template <int ROWS>
constexpr int kChains = ROWS <= 2 ? 4 : 2;

template <int ROWS>
struct Q6KBlock {
  static void run(const int8_t* xq, const float* d, const int32_t* qsum16, int64_t K,
                  const uint8_t* codes, const uint16_t* meta16, float* y, int64_t ldy) {
    constexpr int C = kChains<ROWS>;
    const uint8_t* meta = reinterpret_cast<const uint8_t*>(meta16);
    const int64_t groups = K / kGroup;
    const __m512i low_nibble = _mm512_set1_epi8(0x0F), top = _mm512_set1_epi8(0x30);
    __m512 total[ROWS];
    for (int m = 0; m < ROWS; ++m) total[m] = _mm512_setzero_ps();
    for (int64_t g = 0; g < groups; ++g) {
      __m512i dot[ROWS][C];
      for (int m = 0; m < ROWS; ++m)
        for (int i = 0; i < C; ++i) dot[m][i] = _mm512_setzero_si512();
      const uint8_t* group = codes + g * kQ6GroupBytes;
#pragma GCC unroll 4
      for (int c = 0; c < 6; ++c) llamita_vnni::prefetch_ahead(group + c * 64);  // 384 bytes a group
      for (int c = 0; c < 4; ++c) {
        const __m512i v = _mm512_loadu_si512(group + c * 64);
        const __m512i h = _mm512_loadu_si512(group + 256 + (c / 2) * 64);
        // bits 4, 5 of each byte: the top bits of the low-nibble code, then the high one's.
        const __m512i h_lo = c % 2 == 0 ? _mm512_slli_epi16(h, 4) : h;
        const __m512i h_hi = c % 2 == 0 ? _mm512_slli_epi16(h, 2) : _mm512_srli_epi16(h, 2);
        const __m512i lo = _mm512_or_si512(_mm512_and_si512(v, low_nibble), _mm512_and_si512(h_lo, top));
        const __m512i hi = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(v, 4), low_nibble),
                                           _mm512_and_si512(h_hi, top));
        for (int m = 0; m < ROWS; ++m) {
          const int8_t* xm = xq + m * K + g * kGroup + c * 8;
          __m512i& acc = dot[m][C == 4 ? c : c / 2];
          acc = _mm512_dpbusd_epi32(acc, lo, _mm512_set1_epi32(*reinterpret_cast<const int32_t*>(xm)));
          acc = _mm512_dpbusd_epi32(acc, hi, _mm512_set1_epi32(*reinterpret_cast<const int32_t*>(xm + 4)));
        }
      }
      const uint8_t* mb = meta + (g / kGroupsPerSuper) * kQ6MetaBytes;
      const int64_t j = 2 * (g % kGroupsPerSuper);  // the group's first sub-block
      const __m512i sc0 = _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(mb + kBlockRows * j)));
      const __m512i sc1 = _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(mb + kBlockRows * (j + 1))));
      const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(mb + kQ6DAt)));
      for (int m = 0; m < ROWS; ++m) {
        const int32_t* qs = qsum16 + m * 2 * groups + 2 * g;
        const __m512i s0 = C == 4 ? _mm512_add_epi32(dot[m][0], dot[m][1]) : dot[m][0];
        const __m512i s1 = C == 4 ? _mm512_add_epi32(dot[m][2], dot[m][3]) : dot[m][1];
        const __m512i e0 = _mm512_sub_epi32(s0, _mm512_set1_epi32(32 * qs[0]));
        const __m512i e1 = _mm512_sub_epi32(s1, _mm512_set1_epi32(32 * qs[1]));
        const __m512i isum = _mm512_add_epi32(_mm512_mullo_epi32(sc0, e0), _mm512_mullo_epi32(sc1, e1));
        const __m512 t = _mm512_mul_ps(dw, _mm512_set1_ps(d[m * groups + g]));
        total[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), t, total[m]);
      }
    }
    for (int m = 0; m < ROWS; ++m) _mm512_storeu_ps(y + m * ldy, total[m]);
  }
};

at::Tensor q6k_vnni_mm(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& meta) {
  return llamita_vnni::q6k_mm<Q6KBlock, llamita_vnni::kMaxTile>(x, codes, meta, llamita_vnni::quantize_activations);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(LLAMITA_OPS, m) {
  m.def("q6k_vnni_mm(Tensor x, Tensor codes, Tensor meta) -> Tensor");
}
TORCH_LIBRARY_IMPL(LLAMITA_OPS, CPU, m) {
  m.impl("q6k_vnni_mm", q6k_vnni_mm);
}
