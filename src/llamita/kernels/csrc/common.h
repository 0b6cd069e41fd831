// Shared by every SIMD level of llamita's torch operators: the operand checks and the matmul
// driver (the layouts and the tile loop are in layout.h, which needs no torch). Level-neutral
// C++ only; each level's vector code lives in its own header
// (vnni.h: AVX-512 VNNI; simd256.h: AVX2 and AVX-VNNI).
//
// Each level is its own shared library, compiled with only its own -m flags and with
// LLAMITA_OPS naming the torch operator namespace it registers (llamita, llamita_avx_vnni,
// llamita_avx2; native.py). Everything here sits in that namespace too, so two levels loaded in
// one process (the tests load every level the CPU has) never share an inline function compiled
// for the other's instructions.
#pragma once

#include "layout.h"

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace LLAMITA_OPS {

inline void check_k_shape(const char* op, int64_t N, int64_t K) {
  TORCH_CHECK(N > 0 && K > 0 && K % kSuper == 0 && N % kBlockRows == 0, op, ": a (", N, ", ", K,
              ") weight needs rows a multiple of 16 and columns of 256");
}

inline void check_k_meta(const char* op, const at::Tensor& meta, int64_t N, int64_t K) {
  check_k_shape(op, N, K);
  TORCH_CHECK(meta.numel() == N / kBlockRows * (K / kSuper) * kMetaBytes, op,
              ": meta must be (N/16, K/256, 320) uint8");
}

inline void check_q6k_meta(const char* op, const at::Tensor& meta, int64_t N, int64_t K) {
  check_k_shape(op, N, K);
  TORCH_CHECK(meta.numel() == N / kBlockRows * (K / kSuper) * kQ6MetaBytes, op,
              ": meta must be (N/16, K/256, 288) uint8");
}

inline float bf16_to_float(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// The checks of a dequantize op and its result: (N, K) of float32 or bfloat16, N in whole
// 16-row blocks.
inline at::Tensor dequantized(const char* op, const at::Tensor& codes, at::ScalarType code_type,
                              const at::Tensor& scales, int64_t N, int64_t K, at::ScalarType dtype,
                              at::ScalarType scale_type = at::kBFloat16) {
  TORCH_CHECK(codes.device().is_cpu() && scales.device().is_cpu(), op, " runs on the CPU");
  TORCH_CHECK(codes.dim() == 2 && codes.scalar_type() == code_type && codes.is_contiguous(), op,
              ": codes must be contiguous 2-D ", code_type);
  TORCH_CHECK(scales.scalar_type() == scale_type && scales.is_contiguous(), op,
              ": scales must be contiguous ", scale_type);
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16, op, ": dtype must be float32 or bfloat16");
  TORCH_CHECK(N % kBlockRows == 0 && K % kGroup == 0, op, ": shapes do not fit: codes ", codes.sizes());
  return at::empty({N, K}, codes.options().dtype(dtype));
}

// The checks every kernel makes of its operands: CPU tensors, x 2-D float32 or bfloat16, codes
// 2-D contiguous of code_type and scales contiguous of scale_type.
inline void check_operands(const char* op, const at::Tensor& x, const at::Tensor& codes,
                           at::ScalarType code_type, const at::Tensor& scales,
                           at::ScalarType scale_type = at::kBFloat16) {
  TORCH_CHECK(x.device().is_cpu() && codes.device().is_cpu() && scales.device().is_cpu(), op,
              " runs on the CPU");
  TORCH_CHECK(x.dim() == 2 && (x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kFloat), op,
              ": x must be 2-D float32 or bfloat16");
  TORCH_CHECK(codes.dim() == 2 && codes.scalar_type() == code_type && codes.is_contiguous(), op,
              ": codes must be contiguous 2-D ", code_type);
  TORCH_CHECK(scales.scalar_type() == scale_type && scales.is_contiguous(), op,
              ": scales must be contiguous ", scale_type);
}

// y (M, N) float32 = x (M, K) float32 or bfloat16 times a weight of N rows in 16-row blocks:
// quantizes x per 32 (the level's quantize_activations: x ~ d * xq, xq int8, d = max|x| / 127,
// qsum = sum of xq), then threads split the blocks (each reads only its own codes) and every
// block runs Block<R>::run(xq, d, qsum, K, codes, scales, y, ldy) for tiles of R = MAX_TILE,
// ..., 2, 1 rows of x (a wider tile reuses each loaded weight operand for more rows; its
// accumulators must fit the level's registers). A block's codes are block_code_bytes long and
// its scales block_scales 16-bit values, contiguous.
// Block must be named differently in each kernel's file: GCC gives matmul_blocks<Block> for two
// anonymous-namespace structs of one name the same symbol, and the linker keeps only one.
// With sums16, Block gets the sums of xq per 16 (sums_per_16) instead of per 32.
template <template <int> class Block, int MAX_TILE, class Quantize>
at::Tensor matmul_blocks(const at::Tensor& x, int64_t N, const uint8_t* codes, int64_t block_code_bytes,
                         const uint16_t* scales, int64_t block_scales, Quantize quantize_activations,
                         bool sums16 = false) {
  const at::Tensor xc = x.contiguous();
  const int64_t M = x.size(0), K = x.size(1), groups = K / kGroup;
  at::Tensor y = at::empty({M, N}, x.options().dtype(at::kFloat));
  if (M == 0) return y;
  at::Tensor xq = at::empty({M, K}, x.options().dtype(at::kChar));
  at::Tensor d = at::empty({M, groups}, x.options().dtype(at::kFloat));
  at::Tensor qsum = at::empty({M, groups}, x.options().dtype(at::kInt));
  const int8_t* xqp = xq.data_ptr<int8_t>();
  const float* dp = d.data_ptr<float>();
  const int32_t* qp = qsum.data_ptr<int32_t>();
  // Prefill's rows are quantized by all threads (a serial pass was ~0.1-0.2 ms a call at 512
  // rows); each row alone, so the bytes do not depend on the split. Decode's few rows stay on
  // the calling thread (grain: ~16k values).
  const bool bf16 = xc.scalar_type() == at::kBFloat16;
  const char* xp = static_cast<const char*>(xc.data_ptr());
  const int64_t row_bytes = K * (bf16 ? 2 : 4);
  at::parallel_for(0, M, std::max<int64_t>(1, 16384 / K), [&](int64_t r0, int64_t r1) {
    quantize_activations(xp + r0 * row_bytes, bf16, r1 - r0, K, xq.data_ptr<int8_t>() + r0 * K,
                         d.data_ptr<float>() + r0 * groups, qsum.data_ptr<int32_t>() + r0 * groups);
  });
  int64_t sums_per_row = groups;
  at::Tensor qsum16;
  if (sums16) {
    qsum16 = at::empty({M, K / 16}, x.options().dtype(at::kInt));
    sums_per_16(xqp, M * K, qsum16.data_ptr<int32_t>());
    qp = qsum16.data_ptr<int32_t>();
    sums_per_row = K / 16;
  }
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, N / kBlockRows, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      run_tiles<Block, MAX_TILE>(0, M, xqp, dp, qp, sums_per_row, K, codes + b * block_code_bytes,
                                 scales + b * block_scales, yp + b * kBlockRows, N);
    }
  });
  return y;
}

// The three matmul operators of every level, over its Block templates and activation quantizer:
// checks, then matmul_blocks with each layout's block sizes.
template <template <int> class Block, int MAX_TILE, class Quantize>
at::Tensor q4_mm(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales, Quantize quantize) {
  check_operands("q4_vnni_mm", x, codes, at::kByte, scales);
  const int64_t K = x.size(1), N = codes.size(0);
  TORCH_CHECK(K % kGroup == 0 && N % kBlockRows == 0 && codes.size(1) * 2 == K,
              "shapes do not fit: x ", x.sizes(), ", codes ", codes.sizes());
  TORCH_CHECK(scales.numel() == N * (K / kGroup) * 2, "scales must be (N/16, K/32, 2, 16)");
  return matmul_blocks<Block, MAX_TILE>(x, N, codes.data_ptr<uint8_t>(), kBlockRows * K / 2,
                                        reinterpret_cast<const uint16_t*>(scales.data_ptr()),
                                        (K / kGroup) * 2 * kBlockRows, quantize);
}

template <template <int> class Block, int MAX_TILE, class Quantize>
at::Tensor q4k_mm(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& meta, Quantize quantize) {
  check_operands("q4k_vnni_mm", x, codes, at::kByte, meta, at::kByte);
  const int64_t K = x.size(1), N = codes.size(0);
  TORCH_CHECK(codes.size(1) * 2 == K, "shapes do not fit: x ", x.sizes(), ", codes ", codes.sizes());
  check_k_meta("q4k_vnni_mm", meta, N, K);
  return matmul_blocks<Block, MAX_TILE>(x, N, codes.data_ptr<uint8_t>(), kBlockRows * K / 2,
                                        reinterpret_cast<const uint16_t*>(meta.data_ptr<uint8_t>()),
                                        (K / kSuper) * kMetaBytes / 2, quantize);
}

template <template <int> class Block, int MAX_TILE, class Quantize>
at::Tensor q8_mm(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales, Quantize quantize) {
  check_operands("q8_vnni_mm", x, codes, at::kChar, scales);
  const int64_t K = x.size(1), N = codes.size(0);
  TORCH_CHECK(K % kGroup == 0 && N % kBlockRows == 0 && codes.size(1) == K,
              "shapes do not fit: x ", x.sizes(), ", codes ", codes.sizes());
  TORCH_CHECK(scales.numel() == N, "scales must be (N,)");
  return matmul_blocks<Block, MAX_TILE>(x, N, reinterpret_cast<const uint8_t*>(codes.data_ptr()),
                                        kBlockRows * K, reinterpret_cast<const uint16_t*>(scales.data_ptr()),
                                        kBlockRows, quantize);
}

template <template <int> class Block, int MAX_TILE, class Quantize>
at::Tensor q6k_mm(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& meta, Quantize quantize) {
  check_operands("q6k_vnni_mm", x, codes, at::kByte, meta, at::kByte);
  const int64_t K = x.size(1), N = codes.size(0);
  TORCH_CHECK(codes.size(1) * 4 == K * 3, "shapes do not fit: x ", x.sizes(), ", codes ", codes.sizes());
  check_q6k_meta("q6k_vnni_mm", meta, N, K);
  return matmul_blocks<Block, MAX_TILE>(x, N, codes.data_ptr<uint8_t>(), kBlockRows * K * 3 / 4,
                                        reinterpret_cast<const uint16_t*>(meta.data_ptr<uint8_t>()),
                                        (K / kSuper) * kQ6MetaBytes / 2, quantize, true);
}

// Layout "vnni_q8b" (GGML Q8_0 in its own blocks, kernels/int8.py): the codes as layout "vnni"
// of int8 (q8_vnni.cpp), and the file's float16 scale d of every 32 weights per 16-row block and
// group as (N/16, K/32, 16): one 32-byte load is group g's 16 scales, W[n, k] = d[n, k/32] w[n, k].
template <template <int> class Block, int MAX_TILE, class Quantize>
at::Tensor q8b_mm(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales, Quantize quantize) {
  check_operands("q8b_vnni_mm", x, codes, at::kChar, scales, at::kHalf);
  const int64_t K = x.size(1), N = codes.size(0);
  TORCH_CHECK(K % kGroup == 0 && N % kBlockRows == 0 && codes.size(1) == K,
              "shapes do not fit: x ", x.sizes(), ", codes ", codes.sizes());
  TORCH_CHECK(scales.numel() == N * (K / kGroup), "scales must be (N/16, K/32, 16) float16");
  return matmul_blocks<Block, MAX_TILE>(x, N, reinterpret_cast<const uint8_t*>(codes.data_ptr()),
                                        kBlockRows * K, reinterpret_cast<const uint16_t*>(scales.data_ptr()),
                                        (K / kGroup) * kBlockRows, quantize);
}

// The result of each dequantize operator, after its checks.
inline at::Tensor dequantized_q4(const at::Tensor& codes, const at::Tensor& scales, at::ScalarType dtype) {
  const int64_t N = codes.size(0), K = codes.size(1) * 2;
  at::Tensor out = dequantized("q4_vnni_dequantize", codes, at::kByte, scales, N, K, dtype);
  TORCH_CHECK(scales.numel() == N * (K / kGroup) * 2, "scales must be (N/16, K/32, 2, 16)");
  return out;
}

inline at::Tensor dequantized_q4k(const at::Tensor& codes, const at::Tensor& meta, at::ScalarType dtype) {
  const int64_t N = codes.size(0), K = codes.size(1) * 2;
  at::Tensor out = dequantized("q4k_vnni_dequantize", codes, at::kByte, meta, N, K, dtype, at::kByte);
  check_k_meta("q4k_vnni_dequantize", meta, N, K);
  return out;
}

inline at::Tensor dequantized_q8(const at::Tensor& codes, const at::Tensor& scales, at::ScalarType dtype) {
  const int64_t N = codes.size(0), K = codes.size(1);
  at::Tensor out = dequantized("q8_vnni_dequantize", codes, at::kChar, scales, N, K, dtype);
  TORCH_CHECK(scales.numel() == N, "scales must be (N,)");
  return out;
}

inline at::Tensor dequantized_q6k(const at::Tensor& codes, const at::Tensor& meta, at::ScalarType dtype) {
  const int64_t N = codes.size(0), K = codes.size(1) * 4 / 3;
  TORCH_CHECK(codes.dim() == 2 && codes.size(1) % 3 == 0, "q6k_vnni_dequantize: codes must be (N, 3K/4)");
  at::Tensor out = dequantized("q6k_vnni_dequantize", codes, at::kByte, meta, N, K, dtype, at::kByte);
  check_q6k_meta("q6k_vnni_dequantize", meta, N, K);
  return out;
}

}  // namespace LLAMITA_OPS
