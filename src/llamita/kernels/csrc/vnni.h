// Shared by llamita's AVX-512 VNNI matmuls (q4_vnni.cpp, q8_vnni.cpp): the activation side.
//
// Both kernels multiply integer weight codes with activations rounded to int8 per group of 32
// values (llama.cpp's Q8_0 / Q8_1 dot types do the same): per row and group,
//   x ~ d * xq,  d = max|x| / 127,  xq = round-to-nearest-even(x * 127 / max|x|)  in int8,
// so one vpdpbusd does 64 multiply-adds (16 with a float32 FMA on the same port).
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace llamita_vnni {

constexpr int64_t kGroup = 32;      // activations (and int4 weights) per scale
constexpr int64_t kBlockRows = 16;  // weight rows per 64-byte operand: one int32 lane each

inline __m512 bf16x16_to_float(__m256i v) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
}

inline float bf16_to_float(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
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

// x bfloat16 (rows, K) -> xq int8 (rows, K); d (rows, K/32) the group scales; qsum (rows, K/32)
// the exact sum of each group's xq (the kernels need it for their weight offsets).
inline void quantize_activations(const uint16_t* x, int64_t rows, int64_t K, int8_t* xq,
                                 float* d, int32_t* qsum) {
  const int64_t groups = rows * (K / kGroup);
  for (int64_t i = 0; i < groups; ++i) {
    const uint16_t* p = x + i * kGroup;
    const __m512 a = bf16x16_to_float(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    const __m512 b = bf16x16_to_float(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 16)));
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

// The checks every kernel makes of its operands: CPU tensors, x 2-D bfloat16, codes 2-D
// contiguous of code_type and scales contiguous of scale_type.
inline void check_operands(const char* op, const at::Tensor& x, const at::Tensor& codes,
                           at::ScalarType code_type, const at::Tensor& scales,
                           at::ScalarType scale_type = at::kBFloat16) {
  TORCH_CHECK(x.device().is_cpu() && codes.device().is_cpu() && scales.device().is_cpu(), op,
              " runs on the CPU");
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kBFloat16, op, ": x must be 2-D bfloat16");
  TORCH_CHECK(codes.dim() == 2 && codes.scalar_type() == code_type && codes.is_contiguous(), op,
              ": codes must be contiguous 2-D ", code_type);
  TORCH_CHECK(scales.scalar_type() == scale_type && scales.is_contiguous(), op,
              ": scales must be contiguous ", scale_type);
}

// y (M, N) float32 = x (M, K) bfloat16 times a weight of N rows in 16-row blocks: quantizes x,
// then threads split the blocks (each reads only its own codes) and every block runs
// Block<R>::run(xq, d, qsum, K, codes, scales, y, ldy) for tiles of R = 8, 4, 2, 1 rows of x
// (a wider tile reuses each loaded weight operand for more rows). A block's codes are
// block_code_bytes long and its scales block_scales bfloat16 values, contiguous.
// Block must be named differently in each kernel's file: GCC gives matmul_blocks<Block> for two
// anonymous-namespace structs of one name the same symbol, and the linker keeps only one.
template <template <int> class Block>
at::Tensor matmul_blocks(const at::Tensor& x, int64_t N, const uint8_t* codes,
                         int64_t block_code_bytes, const uint16_t* scales, int64_t block_scales) {
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
  quantize_activations(reinterpret_cast<const uint16_t*>(xc.data_ptr()), M, K, xq.data_ptr<int8_t>(),
                       d.data_ptr<float>(), qsum.data_ptr<int32_t>());
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, N / kBlockRows, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const uint8_t* cb = codes + b * block_code_bytes;
      const uint16_t* sb = scales + b * block_scales;
      float* yb = yp + b * kBlockRows;
      int64_t m = 0;
      for (; m + 8 <= M; m += 8) Block<8>::run(xqp + m * K, dp + m * groups, qp + m * groups, K, cb, sb, yb + m * N, N);
      for (; m + 4 <= M; m += 4) Block<4>::run(xqp + m * K, dp + m * groups, qp + m * groups, K, cb, sb, yb + m * N, N);
      for (; m + 2 <= M; m += 2) Block<2>::run(xqp + m * K, dp + m * groups, qp + m * groups, K, cb, sb, yb + m * N, N);
      for (; m < M; ++m) Block<1>::run(xqp + m * K, dp + m * groups, qp + m * groups, K, cb, sb, yb + m * N, N);
    }
  });
  return y;
}

}  // namespace llamita_vnni
