// Load-time packing of GGML's 4-bit blocks into llamita's 16-row layouts ("vnni" for Q4_0 /
// Q4_1, "vnni_k" for Q4_K; the layouts are described in q4_vnni.cpp and q4k_vnni.cpp) on x86
// (portable.cpp holds the same in plain C++, for NEON, and Q6_K's for every level). Every
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

using LLAMITA_OPS::kMetaBytes;
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
          LLAMITA_OPS::q4k_row_meta(block, r, mb);
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

}  // namespace

TORCH_LIBRARY_FRAGMENT(LLAMITA_OPS, m) {
  m.def("q4_vnni_pack_ggml(Tensor raw, int rows, int cols, bool has_min) -> (Tensor, Tensor)");
  m.def("q4k_vnni_pack_ggml(Tensor raw, int rows, int cols) -> (Tensor, Tensor)");
}
TORCH_LIBRARY_IMPL(LLAMITA_OPS, CPU, m) {
  m.impl("q4_vnni_pack_ggml", q4_vnni_pack_ggml);
  m.impl("q4k_vnni_pack_ggml", q4k_vnni_pack_ggml);
}
