// 8-bit weight x 8-bit activation matmuls on AVX-512 VNNI: the decode-step GEMV/GEMM for the
// int8 weights of kernels/int8.py: per row (q8_vnni_mm: GGML Q5_*, Q2_K, Q3_K after
// re-quantizing) and GGML Q8_0 in its own blocks of 32 (q8b_vnni_mm, layout "vnni_q8b": the tied
// output projection of small models, the largest matmul of their decode step, among them).
//
// Why our own kernel: torch's _weight_int8pack_mm converts every weight to float and multiplies
// in float32 (on one 512-bit FMA port, 16 multiply-adds an instruction) and its cost grows
// almost linearly with the rows of x: 7.5 ms for 8 rows of the 49152x576 output projection.
// vpdpbusd does 64 (unsigned x signed bytes), and each loaded weight operand serves up to 8 rows.
//
// Numerics: W[n, k] = w[n, k] * s[n] (w int8, s bfloat16, one scale per row). x is rounded to
// bfloat16 (the caller's dtype), then per row and group of 32 quantized to d * xq (vnni.h).
// vpdpbusd needs one unsigned operand: the weight byte with its top bit flipped is w + 128 in
// [1, 255], and the offset is taken back exactly in int32 per group:
//   y[m, n] = s[n] * sum_g d[m, g] * (sum_k (w + 128) xq  -  128 * sum_k xq)
// with the integer sums exact and the rest in float32. The result is float32.
//
// Layout (private to this kernel, built by kernels/int8.py `_vnni_order`):
//   codes int8 (N, K): rows in blocks of 16; a block's 16K bytes run [c][64] for chunk c of 4 k
//   (c = 0..K/4-1); byte 4r + j of chunk c holds w[16b + r, 4c + j] (r = 0..15, j = 0..3): one
//   64-byte load is 16 rows x 4 consecutive k, the operand of vpdpbusd.
//   scales bfloat16 (N,), in row order.
// A block of 16 rows is contiguous, so slicing whole blocks off the front (fused q/k/v parts)
// or concatenating them is exact.

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

// One block of 16 output rows for ROWS rows of x: each weight operand is loaded once and used
// for every row of x. BLOCK_SCALES false: layout "vnni", one bfloat16 scale per row, applied at
// the end:  y[m, n] = s[n] * sum_g d[m, g] * sum_k w xq
// BLOCK_SCALES true: layout "vnni_q8b" (GGML Q8_0 in its own blocks, common.h), each group's
// integer sum scaled by its own weight scale, as llama.cpp's ggml_vec_dot_q8_0_q8_0 does:
//   y[m, n] = sum_g float(sum_k w xq) * (d_w[n, g] * d[m, g])
template <int ROWS, bool BLOCK_SCALES>
struct Q8Kernel {
  static void run(const int8_t* xq, const float* d, const int32_t* qsum, int64_t K,
                  const uint8_t* codes, const uint16_t* scales, float* y, int64_t ldy) {
    const int64_t groups = K / kGroup;
    const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
    __m512 total[ROWS];
    for (int m = 0; m < ROWS; ++m) total[m] = _mm512_setzero_ps();
    for (int64_t g = 0; g < groups; ++g) {
      __m512i dot[ROWS];
      for (int m = 0; m < ROWS; ++m) dot[m] = _mm512_setzero_si512();
      const uint8_t* chunk = codes + g * kBlockRows * kGroup;
#pragma GCC unroll 8
      for (int c = 0; c < 8; ++c) {
        llamita_vnni::prefetch_ahead(chunk + c * 64);
        const __m512i v = _mm512_xor_si512(_mm512_loadu_si512(chunk + c * 64), flip);  // w + 128
        for (int m = 0; m < ROWS; ++m) {
          const int8_t* xm = xq + m * K + g * kGroup + c * 4;
          dot[m] = _mm512_dpbusd_epi32(dot[m], v, _mm512_set1_epi32(*reinterpret_cast<const int32_t*>(xm)));
        }
      }
      if constexpr (BLOCK_SCALES) {
        const __m512 dw =
            _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(scales + g * kBlockRows)));
        for (int m = 0; m < ROWS; ++m) {
          const __m512i exact = _mm512_sub_epi32(dot[m], _mm512_set1_epi32(128 * qsum[m * groups + g]));
          const __m512 scale = _mm512_mul_ps(dw, _mm512_set1_ps(d[m * groups + g]));
          total[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(exact), scale, total[m]);
        }
      } else {
        for (int m = 0; m < ROWS; ++m) {
          const __m512i exact = _mm512_sub_epi32(dot[m], _mm512_set1_epi32(128 * qsum[m * groups + g]));
          total[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(exact), _mm512_set1_ps(d[m * groups + g]), total[m]);
        }
      }
    }
    if constexpr (BLOCK_SCALES) {
      for (int m = 0; m < ROWS; ++m) _mm512_storeu_ps(y + m * ldy, total[m]);
    } else {
      const __m512 s = bf16x16_to_float(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(scales)));
      for (int m = 0; m < ROWS; ++m) _mm512_storeu_ps(y + m * ldy, _mm512_mul_ps(total[m], s));
    }
  }
};

template <int ROWS>
using Q8Block = Q8Kernel<ROWS, false>;
template <int ROWS>
using Q8BBlock = Q8Kernel<ROWS, true>;

at::Tensor q8b_vnni_mm(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales) {
  return llamita_vnni::q8b_mm<Q8BBlock, llamita_vnni::kMaxTile>(x, codes, scales, llamita_vnni::quantize_activations);
}

at::Tensor q8_vnni_mm(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales) {
  return llamita_vnni::q8_mm<Q8Block, llamita_vnni::kMaxTile>(x, codes, scales, llamita_vnni::quantize_activations);
}

// The dense weight W (N, K) = w * s in float32 or bfloat16 (the product is exact in float32,
// so bfloat16 rounds it once, as torch's bfloat16 multiply does), for prefill's dense matmul:
// one pass, reading the blocks in place (no reorder copy to row order first).
at::Tensor q8_vnni_dequantize(const at::Tensor& codes, const at::Tensor& scales, at::ScalarType dtype) {
  const int64_t N = codes.size(0), K = codes.size(1);
  at::Tensor out = llamita_vnni::dequantized_q8(codes, scales, dtype);
  const int8_t* cp = codes.data_ptr<int8_t>();
  const uint16_t* sp = reinterpret_cast<const uint16_t*>(scales.data_ptr());
  void* op = out.data_ptr();
  const bool bf16 = dtype == at::kBFloat16;
  at::parallel_for(0, N / kBlockRows, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int8_t* block = cp + b * kBlockRows * K;
      for (int r = 0; r < kBlockRows; ++r) {
        const __m512 s = _mm512_set1_ps(llamita_vnni::bf16_to_float(sp[b * kBlockRows + r]));
        const int64_t at = (b * kBlockRows + r) * K;
        for (int64_t k = 0; k < K; k += 16) {  // 4 chunks of 4 k: row r's bytes 4r..4r+3 of each
          int32_t piece[4];
          for (int c = 0; c < 4; ++c) std::memcpy(&piece[c], block + (k / 4 + c) * 64 + 4 * r, 4);
          const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(piece));
          const __m512 w = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)), s);
          llamita_vnni::store_weights(w, op, at + k, bf16);
        }
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(LLAMITA_OPS, m) {
  m.def("q8_vnni_mm(Tensor x, Tensor codes, Tensor scales) -> Tensor");
  m.def("q8_vnni_dequantize(Tensor codes, Tensor scales, ScalarType dtype) -> Tensor");
  m.def("q8b_vnni_mm(Tensor x, Tensor codes, Tensor scales) -> Tensor");
}
TORCH_LIBRARY_IMPL(LLAMITA_OPS, CPU, m) {
  m.impl("q8_vnni_mm", q8_vnni_mm);
  m.impl("q8_vnni_dequantize", q8_vnni_dequantize);
  m.impl("q8b_vnni_mm", q8b_vnni_mm);
}
