// 4-bit weight x 8-bit activation matmul on AVX-512 VNNI: the decode-step GEMV/GEMM for GGML's
// affine 4-bit weights (Q4_0, Q4_1, Q4_K after kernels/int4.py's mapping).
//
// Why our own kernel: torch's _weight_int4pack_mm_for_cpu expands every nibble to float32 and
// multiplies in float32; on this class of CPU (one 512-bit FMA port) that caps it near 25 GMAC/s
// a core and its cost grows almost linearly with the rows of x. Multiplying the 4-bit codes
// with activations quantized to int8 per 32 values (what llama.cpp does: its Q8_0/Q8_1 dot
// types) lets one vpdpbusd do 64 multiply-adds, 4x an FMA; measured 2.2-3.2x faster than
// torch's kernel at 1 row and 3-4x at 8 (benchmarks/int4_matmul.py).
//
// Numerics: W[n, k] = (q - 8) * s + z per group g of 32 k (s, z bfloat16, as torch's form).
// x is rounded to bfloat16 (the caller's dtype), then per row and group quantized to d * xq
// (vnni.h). Then
//   y[m, n] = sum_g  (s d) * sum_k q xq  +  (z - 8 s) * (d * sum_k xq)
// with the integer sums exact in int32 and the rest in float32. The result is float32.
//
// Layout (private to this kernel, built by kernels/int4.py `_vnni_pack`):
//   codes uint8 (N, K/2): rows in blocks of 16; a block's 8K bytes run [g][c][64] for group g
//   and chunk c of 8 k (c = 0..3); byte 4r + j of a chunk holds q[16b + r, 32g + 8c + j] in
//   its low nibble and q[16b + r, 32g + 8c + 4 + j] in its high nibble (r = 0..15, j = 0..3):
//   one 64-byte load gives, per nibble, 16 rows x 4 consecutive k, the operand of vpdpbusd.
//   scales bfloat16 (N/16, K/32, 2, 16): per block and group the 16 rows' s, then their z.
// A block of 16 rows is contiguous in both, so slicing whole blocks off the front (fused
// q/k/v parts) or concatenating them is exact.

#include "vnni.h"

#include <ATen/core/Tensor.h>
#include <immintrin.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>

namespace {

using llamita_vnni::bf16x16_to_float;
using llamita_vnni::kBlockRows;
using llamita_vnni::kGroup;

// One block of 16 output rows for ROWS rows of x: each code chunk is unpacked once and used
// for every row of x, which is why the cost grows slowly with ROWS.
template <int ROWS>
struct Q4Block {
  static void run(const int8_t* xq, const float* d, const int32_t* qsum, int64_t K,
                  const uint8_t* codes, const uint16_t* scales, float* y, int64_t ldy) {
    const int64_t groups = K / kGroup;
    const __m512i low_nibble = _mm512_set1_epi8(0x0F);
    __m512 total[ROWS];
    for (int m = 0; m < ROWS; ++m) total[m] = _mm512_setzero_ps();
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
      const __m512i sz = _mm512_loadu_si512(scales + g * 2 * kBlockRows);
      const __m512 s = bf16x16_to_float(_mm512_castsi512_si256(sz));
      const __m512 z = bf16x16_to_float(_mm512_extracti64x4_epi64(sz, 1));
      const __m512 offset = _mm512_fmadd_ps(_mm512_set1_ps(-8.0f), s, z);  // z - 8 s
      for (int m = 0; m < ROWS; ++m) {
        const float dm = d[m * groups + g];
        const __m512 sd = _mm512_mul_ps(s, _mm512_set1_ps(dm));
        total[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[m]), sd, total[m]);
        const float xs = dm * static_cast<float>(qsum[m * groups + g]);  // d * sum xq
        total[m] = _mm512_fmadd_ps(offset, _mm512_set1_ps(xs), total[m]);
      }
    }
    for (int m = 0; m < ROWS; ++m) _mm512_storeu_ps(y + m * ldy, total[m]);
  }
};

at::Tensor q4_vnni_mm(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales) {
  return llamita_vnni::q4_mm<Q4Block, llamita_vnni::kMaxTile>(x, codes, scales, llamita_vnni::quantize_activations);
}

// The dense weight W (N, K) in float32 or bfloat16, for prefill's dense matmul: one pass over
// the codes (torch ops took six: nibbles, reorder, offset, widen, scale, round). W = (q - 8) s
// + z as one FMA: (q - 8) s is exact in float32, so this rounds once, as mul-then-add does.
at::Tensor q4_vnni_dequantize(const at::Tensor& codes, const at::Tensor& scales, at::ScalarType dtype) {
  const int64_t N = codes.size(0), K = codes.size(1) * 2, groups = K / kGroup;
  at::Tensor out = llamita_vnni::dequantized_q4(codes, scales, dtype);
  const uint8_t* cp = codes.data_ptr<uint8_t>();
  const uint16_t* sp = reinterpret_cast<const uint16_t*>(scales.data_ptr());
  void* op = out.data_ptr();
  const bool bf16 = dtype == at::kBFloat16;
  at::parallel_for(0, N / kBlockRows, 1, [&](int64_t b0, int64_t b1) {
    const __m128i low_nibble = _mm_set1_epi8(0x0F);
    const __m512 eight = _mm512_set1_ps(8.0f);
    for (int64_t b = b0; b < b1; ++b) {
      for (int64_t g = 0; g < groups; ++g) {
        const uint8_t* chunk = cp + b * kBlockRows * K / 2 + g * kBlockRows * kGroup / 2;
        const uint16_t* sz = sp + (b * groups + g) * 2 * kBlockRows;
        for (int r = 0; r < kBlockRows; ++r) {
          // Row r's 4 bytes of each chunk c (k = 8c..8c+7: low nibbles 8c..8c+3, high ones
          // 8c+4..8c+7); 32-bit pieces interleaved low/high put k in order.
          int32_t piece[4];
          for (int c = 0; c < 4; ++c) std::memcpy(&piece[c], chunk + c * 64 + 4 * r, 4);
          const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(piece));
          const __m128i lo = _mm_and_si128(v, low_nibble);
          const __m128i hi = _mm_and_si128(_mm_srli_epi16(v, 4), low_nibble);
          const __m512 s = _mm512_set1_ps(llamita_vnni::bf16_to_float(sz[r]));
          const __m512 z = _mm512_set1_ps(llamita_vnni::bf16_to_float(sz[kBlockRows + r]));
          const int64_t at = (b * kBlockRows + r) * K + g * kGroup;
          for (int half = 0; half < 2; ++half) {
            const __m128i q = half == 0 ? _mm_unpacklo_epi32(lo, hi) : _mm_unpackhi_epi32(lo, hi);
            const __m512 qf = _mm512_sub_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(q)), eight);
            llamita_vnni::store_weights(_mm512_fmadd_ps(qf, s, z), op, at + 16 * half, bf16);
          }
        }
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(LLAMITA_OPS, m) {
  m.def("q4_vnni_mm(Tensor x, Tensor codes, Tensor scales) -> Tensor");
  m.def("q4_vnni_dequantize(Tensor codes, Tensor scales, ScalarType dtype) -> Tensor");
}
TORCH_LIBRARY_IMPL(LLAMITA_OPS, CPU, m) {
  m.impl("q4_vnni_mm", q4_vnni_mm);
  m.impl("q4_vnni_dequantize", q4_vnni_dequantize);
}
