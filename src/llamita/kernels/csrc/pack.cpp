// Load-time packing of GGML's blocks into llamita's 16-row layouts ("vnni" for Q4_0 / Q4_1,
// "vnni_k" for Q4_K, "vnni_q6k" for Q6_K; the layouts are described in q4_vnni.cpp,
// q4k_vnni.cpp and q6k_vnni.cpp), and Q6_K's dequantization (the same at every level). Every
// SIMD level's library compiles it (SSSE3 shuffles, F16C conversions, AVX2 for the bfloat16
// rounding), so a CPU that runs any level's kernels also packs for them.

#include "simd256.h"

#include <ATen/core/Tensor.h>
#include <immintrin.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>
#include <tuple>

namespace {

using LLAMITA_OPS::float_to_bf16x8;
using LLAMITA_OPS::kBlockRows;
using LLAMITA_OPS::kGroup;

using LLAMITA_OPS::kDAt;
using LLAMITA_OPS::kDminAt;
using LLAMITA_OPS::kMetaBytes;
using LLAMITA_OPS::kMinsAt;
using LLAMITA_OPS::kSubBlocks;
using LLAMITA_OPS::kSuper;

// GGML Q4_0 / Q4_1 blocks (32 weights: f16 d, [f16 m,] 16 bytes of nibbles, weight j low and
// j + 16 high) straight into the layout above, at load: one pass instead of torch's unpack,
// six-axis permute and repack (0.13 s of a 0.4 s load of the default model). Scale s = d,
// zero z = m + 8d (Q4_1; 8d is exact, so one float32 rounding as in torch) or 0 (Q4_0), then
// rounded to bfloat16 as torch does.
std::tuple<at::Tensor, at::Tensor> q4_vnni_pack_ggml(const at::Tensor& raw, int64_t N, int64_t K,
                                                     bool has_min) {
  TORCH_CHECK(raw.device().is_cpu() && raw.scalar_type() == at::kByte && raw.is_contiguous() && raw.dim() == 1,
              "q4_vnni_pack_ggml: raw must be contiguous 1-D uint8 on the CPU");
  TORCH_CHECK(N > 0 && K > 0 && N % kBlockRows == 0 && K % kGroup == 0,
              "q4_vnni_pack_ggml: shape (", N, ", ", K, ") needs rows a multiple of 16, columns of 32");
  const int64_t groups = K / kGroup, block_bytes = has_min ? 20 : 18;
  TORCH_CHECK(raw.numel() == N * groups * block_bytes, "q4_vnni_pack_ggml: ", raw.numel(),
              " bytes for a (", N, ", ", K, ") weight");
  at::Tensor codes = at::empty({N, K / 2}, raw.options());
  at::Tensor scales = at::empty({N / kBlockRows, groups, 2, kBlockRows}, raw.options().dtype(at::kBFloat16));
  const uint8_t* rp = raw.data_ptr<uint8_t>();
  uint8_t* cp = codes.data_ptr<uint8_t>();
  uint16_t* sp = reinterpret_cast<uint16_t*>(scales.data_ptr());
  const int64_t qs_at = has_min ? 4 : 2;
  at::parallel_for(0, N / kBlockRows, 1, [&](int64_t b0, int64_t b1) {
    const __m128i low_nibble = _mm_set1_epi8(0x0F);
    // Per nibble half: weights 0-3 and 8-11 (chunks 0, 1 low nibbles), then 4-7 and 12-15.
    const __m128i order = _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15);
    alignas(32) uint16_t d[kBlockRows], m[kBlockRows];
    for (int64_t b = b0; b < b1; ++b) {
      for (int64_t g = 0; g < groups; ++g) {
        uint8_t* chunk = cp + b * kBlockRows * K / 2 + g * kBlockRows * kGroup / 2;
        for (int r = 0; r < kBlockRows; ++r) {
          const uint8_t* block = rp + ((b * kBlockRows + r) * groups + g) * block_bytes;
          std::memcpy(&d[r], block, 2);
          if (has_min) std::memcpy(&m[r], block + 2, 2);
          const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(block + qs_at));
          const __m128i lo = _mm_shuffle_epi8(_mm_and_si128(v, low_nibble), order);  // weights 0-15
          const __m128i hi = _mm_shuffle_epi8(_mm_and_si128(_mm_srli_epi16(v, 4), low_nibble), order);
          // Byte 4c + j: weight 8c + j in the low nibble, 8c + 4 + j in the high one.
          const __m128i first = _mm_unpacklo_epi64(lo, hi), second = _mm_unpackhi_epi64(lo, hi);
          alignas(16) uint8_t packed[16];
          _mm_store_si128(reinterpret_cast<__m128i*>(packed), _mm_or_si128(first, _mm_slli_epi16(second, 4)));
          for (int c = 0; c < 4; ++c) std::memcpy(chunk + c * 64 + 4 * r, packed + 4 * c, 4);
        }
        uint16_t* sz = sp + (b * groups + g) * 2 * kBlockRows;
        for (int h = 0; h < 2; ++h) {  // rows 8h..8h+7
          const __m256 s = _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(d + 8 * h)));
          const __m256 z = has_min
              ? _mm256_add_ps(_mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(m + 8 * h))),
                              _mm256_mul_ps(_mm256_set1_ps(8.0f), s))
              : _mm256_setzero_ps();
          _mm_storeu_si128(reinterpret_cast<__m128i*>(sz + 8 * h), float_to_bf16x8(s));
          _mm_storeu_si128(reinterpret_cast<__m128i*>(sz + kBlockRows + 8 * h), float_to_bf16x8(z));
        }
      }
    }
  });
  return {codes, scales};
}

// 16 codes (weights 0..15 of a group, one per byte) and the next 16 -> the group's 16 "vnni"
// bytes for one row: byte 4c + j = q[8c + j] | q[8c + 4 + j] << 4.
inline __m128i vnni_bytes(__m128i first16, __m128i next16) {
  // Per half: weights 0-3 and 8-11 (chunks 0, 1 low nibbles), then 4-7 and 12-15.
  const __m128i order = _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15);
  const __m128i a = _mm_shuffle_epi8(first16, order), b = _mm_shuffle_epi8(next16, order);
  return _mm_or_si128(_mm_unpacklo_epi64(a, b), _mm_slli_epi16(_mm_unpackhi_epi64(a, b), 4));
}

// GGML Q4_K blocks (256 weights: f16 d, f16 dmin, 12 bytes of 6-bit scales and mins, 128 bytes
// of nibbles: bytes 32c..32c+31 hold sub-block 2c in their low nibbles, 2c+1 in their high)
// straight into the layout above, at load: one pass where torch ops took ten (0.11 s for one
// 14336 x 4096 weight, 13 s of an 8B load).
std::tuple<at::Tensor, at::Tensor> q4k_vnni_pack_ggml(const at::Tensor& raw, int64_t N, int64_t K) {
  TORCH_CHECK(raw.device().is_cpu() && raw.scalar_type() == at::kByte && raw.is_contiguous() && raw.dim() == 1,
              "q4k_vnni_pack_ggml: raw must be contiguous 1-D uint8 on the CPU");
  LLAMITA_OPS::check_k_shape("q4k_vnni_pack_ggml", N, K);
  constexpr int64_t kBlockBytes = 144;
  const int64_t supers = K / kSuper;
  TORCH_CHECK(raw.numel() == N * supers * kBlockBytes, "q4k_vnni_pack_ggml: ", raw.numel(),
              " bytes for a (", N, ", ", K, ") weight");
  at::Tensor codes = at::empty({N, K / 2}, raw.options());
  at::Tensor meta = at::empty({N / kBlockRows, supers, kMetaBytes}, raw.options());
  const uint8_t* rp = raw.data_ptr<uint8_t>();
  uint8_t* cp = codes.data_ptr<uint8_t>();
  uint8_t* mp = meta.data_ptr<uint8_t>();
  at::parallel_for(0, N / kBlockRows, 1, [&](int64_t b0, int64_t b1) {
    const __m128i low_nibble = _mm_set1_epi8(0x0F);
    for (int64_t b = b0; b < b1; ++b) {
      for (int64_t sb = 0; sb < supers; ++sb) {
        uint8_t* mb = mp + (b * supers + sb) * kMetaBytes;
        for (int r = 0; r < kBlockRows; ++r) {
          const uint8_t* block = rp + ((b * kBlockRows + r) * supers + sb) * kBlockBytes;
          std::memcpy(mb + kDAt + 2 * r, block, 2);
          std::memcpy(mb + kDminAt + 2 * r, block + 2, 2);
          const uint8_t* sc = block + 4;  // GGML's get_scale_min_k4
          for (int j = 0; j < kSubBlocks; ++j) {
            const bool low = j < 4;
            mb[kBlockRows * j + r] = low ? sc[j] & 63 : (sc[j + 4] & 0x0F) | ((sc[j - 4] >> 6) << 4);
            mb[kMinsAt + kBlockRows * j + r] = low ? sc[j + 4] & 63 : (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4);
          }
          for (int c = 0; c < 4; ++c) {  // sub-blocks 2c (low nibbles) and 2c + 1 (high)
            const __m128i v0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(block + 16 + 32 * c));
            const __m128i v1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(block + 32 + 32 * c));
            for (int half = 0; half < 2; ++half) {
              const int64_t g = sb * kSubBlocks + 2 * c + half;
              const __m128i q0 = half == 0 ? _mm_and_si128(v0, low_nibble) : _mm_and_si128(_mm_srli_epi16(v0, 4), low_nibble);
              const __m128i q1 = half == 0 ? _mm_and_si128(v1, low_nibble) : _mm_and_si128(_mm_srli_epi16(v1, 4), low_nibble);
              alignas(16) uint8_t packed[16];
              _mm_store_si128(reinterpret_cast<__m128i*>(packed), vnni_bytes(q0, q1));
              uint8_t* chunk = cp + b * kBlockRows * K / 2 + g * kBlockRows * kGroup / 2;
              for (int cc = 0; cc < 4; ++cc) std::memcpy(chunk + cc * 64 + 4 * r, packed + 4 * cc, 4);
            }
          }
        }
      }
    }
  });
  return {codes, meta};
}

using LLAMITA_OPS::kQ6DAt;
using LLAMITA_OPS::kQ6GroupBytes;
using LLAMITA_OPS::kQ6MetaBytes;
using LLAMITA_OPS::kQ6Subs;

// GGML Q6_K blocks (256 weights: ql[128] low nibbles, qh[64] top bit pairs, int8 sc[16], f16 d;
// in each half of 128, ql[l] holds weights l (low nibble) and l + 64 (high), ql[l + 32] weights
// l + 32 and l + 96, and qh[l] bits 0-1, 2-3, 4-5, 6-7 the top bits of l, l + 32, l + 64,
// l + 96) into the "vnni_q6k" layout (common.h, q6k_vnni.cpp), at load: the codes and scales
// move over unchanged.
std::tuple<at::Tensor, at::Tensor> q6k_vnni_pack_ggml(const at::Tensor& raw, int64_t N, int64_t K) {
  TORCH_CHECK(raw.device().is_cpu() && raw.scalar_type() == at::kByte && raw.is_contiguous() && raw.dim() == 1,
              "q6k_vnni_pack_ggml: raw must be contiguous 1-D uint8 on the CPU");
  LLAMITA_OPS::check_k_shape("q6k_vnni_pack_ggml", N, K);
  constexpr int64_t kBlockBytes = 210;
  const int64_t supers = K / kSuper;
  TORCH_CHECK(raw.numel() == N * supers * kBlockBytes, "q6k_vnni_pack_ggml: ", raw.numel(),
              " bytes for a (", N, ", ", K, ") weight");
  at::Tensor codes = at::empty({N, K * 3 / 4}, raw.options());
  at::Tensor meta = at::empty({N / kBlockRows, supers, kQ6MetaBytes}, raw.options());
  const uint8_t* rp = raw.data_ptr<uint8_t>();
  uint8_t* cp = codes.data_ptr<uint8_t>();
  uint8_t* mp = meta.data_ptr<uint8_t>();
  at::parallel_for(0, N / kBlockRows, 1, [&](int64_t b0, int64_t b1) {
    uint8_t q[kSuper];
    for (int64_t b = b0; b < b1; ++b) {
      for (int64_t sb = 0; sb < supers; ++sb) {
        uint8_t* mb = mp + (b * supers + sb) * kQ6MetaBytes;
        for (int r = 0; r < kBlockRows; ++r) {
          const uint8_t* block = rp + ((b * kBlockRows + r) * supers + sb) * kBlockBytes;
          for (int half = 0; half < 2; ++half) {
            const uint8_t* ql = block + 64 * half;
            const uint8_t* qh = block + 128 + 32 * half;
            uint8_t* out = q + 128 * half;
            for (int l = 0; l < 32; ++l) {
              out[l] = (ql[l] & 0x0F) | ((qh[l] & 3) << 4);
              out[l + 32] = (ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4);
              out[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
              out[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
            }
          }
          for (int j = 0; j < kQ6Subs; ++j) mb[kBlockRows * j + r] = block[192 + j];
          std::memcpy(mb + kQ6DAt + 2 * r, block + 208, 2);
          for (int64_t gs = 0; gs < kSuper / kGroup; ++gs) {
            const uint8_t* qg = q + kGroup * gs;
            uint8_t* group = cp + b * kBlockRows * K * 3 / 4 + (sb * (kSuper / kGroup) + gs) * kQ6GroupBytes;
            for (int j = 0; j < 4; ++j) {
              for (int c = 0; c < 4; ++c) group[c * 64 + 4 * r + j] = (qg[8 * c + j] & 0x0F) | ((qg[8 * c + 4 + j] & 0x0F) << 4);
              for (int h = 0; h < 2; ++h) {
                const uint8_t* t = qg + 16 * h + j;
                group[256 + h * 64 + 4 * r + j] = (t[0] >> 4) | ((t[4] >> 4) << 2) | ((t[8] >> 4) << 4) | ((t[12] >> 4) << 6);
              }
            }
          }
        }
      }
    }
  });
  return {codes, meta};
}

// The dense "vnni_q6k" weight (N, K) in float32 or bfloat16: W = (d sc) (q - 32), d sc exact in
// float32 and the product rounded once, as GGML's (and quants.py's) dequantization; the same
// code at every level.
at::Tensor q6k_vnni_dequantize(const at::Tensor& codes, const at::Tensor& meta, at::ScalarType dtype) {
  at::Tensor out = LLAMITA_OPS::dequantized_q6k(codes, meta, dtype);
  const int64_t N = out.size(0), K = out.size(1), supers = K / kSuper;
  const uint8_t* cp = codes.data_ptr<uint8_t>();
  const uint8_t* mp = meta.data_ptr<uint8_t>();
  void* op = out.data_ptr();
  const bool bf16 = dtype == at::kBFloat16;
  at::parallel_for(0, N / kBlockRows, 1, [&](int64_t b0, int64_t b1) {
    alignas(16) uint8_t q[kGroup];
    for (int64_t b = b0; b < b1; ++b) {
      for (int64_t sb = 0; sb < supers; ++sb) {
        const uint8_t* mb = mp + (b * supers + sb) * kQ6MetaBytes;
        for (int r = 0; r < kBlockRows; ++r) {
          uint16_t dh;
          std::memcpy(&dh, mb + kQ6DAt + 2 * r, 2);
          const float dw = _cvtsh_ss(dh);
          for (int64_t gs = 0; gs < kSuper / kGroup; ++gs) {
            const int64_t g = sb * (kSuper / kGroup) + gs;
            LLAMITA_OPS::q6k_row_codes(cp + b * kBlockRows * K * 3 / 4 + g * kQ6GroupBytes, r, q);
            const int64_t at = (b * kBlockRows + r) * K + g * kGroup;
            for (int e = 0; e < 4; ++e) {  // 8 weights each; sub-block 2 gs + e / 2
              const float s = dw * static_cast<float>(static_cast<int8_t>(mb[kBlockRows * (2 * gs + e / 2) + r]));
              const __m256 qf = _mm256_cvtepi32_ps(_mm256_sub_epi32(
                  _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + 8 * e))), _mm256_set1_epi32(32)));
              LLAMITA_OPS::store_weights8(_mm256_mul_ps(_mm256_set1_ps(s), qf), op, at + 8 * e, bf16);
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
  m.def("q4_vnni_pack_ggml(Tensor raw, int rows, int cols, bool has_min) -> (Tensor, Tensor)");
  m.def("q4k_vnni_pack_ggml(Tensor raw, int rows, int cols) -> (Tensor, Tensor)");
  m.def("q6k_vnni_pack_ggml(Tensor raw, int rows, int cols) -> (Tensor, Tensor)");
  m.def("q6k_vnni_dequantize(Tensor codes, Tensor meta, ScalarType dtype) -> Tensor");
}
TORCH_LIBRARY_IMPL(LLAMITA_OPS, CPU, m) {
  m.impl("q4_vnni_pack_ggml", q4_vnni_pack_ggml);
  m.impl("q4k_vnni_pack_ggml", q4k_vnni_pack_ggml);
  m.impl("q6k_vnni_pack_ggml", q6k_vnni_pack_ggml);
  m.impl("q6k_vnni_dequantize", q6k_vnni_dequantize);
}
