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
#include <tuple>

namespace {

using llamita_vnni::kBlockRows;
using llamita_vnni::kGroup;

constexpr int64_t kSuper = 256;                     // weights per Q4_K super-block
constexpr int64_t kSubBlocks = kSuper / kGroup;     // 8 groups share one d and dmin
constexpr int64_t kMetaBytes = 2 * kSubBlocks * kBlockRows + 2 * 2 * kBlockRows;  // 320
constexpr int64_t kMinsAt = kSubBlocks * kBlockRows, kDAt = 2 * kMinsAt, kDminAt = kDAt + 2 * kBlockRows;

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

void check_shape(const char* op, int64_t N, int64_t K) {
  TORCH_CHECK(N > 0 && K > 0 && K % kSuper == 0 && N % kBlockRows == 0, op, ": a (", N, ", ", K,
              ") weight needs rows a multiple of 16 and columns of 256");
}

void check_meta(const char* op, const at::Tensor& meta, int64_t N, int64_t K) {
  check_shape(op, N, K);
  TORCH_CHECK(meta.numel() == N / kBlockRows * (K / kSuper) * kMetaBytes, op,
              ": meta must be (N/16, K/256, 320) uint8");
}

at::Tensor q4k_vnni_mm(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& meta) {
  llamita_vnni::check_operands("q4k_vnni_mm", x, codes, at::kByte, meta, at::kByte);
  const int64_t K = x.size(1), N = codes.size(0);
  TORCH_CHECK(codes.size(1) * 2 == K, "shapes do not fit: x ", x.sizes(), ", codes ", codes.sizes());
  check_meta("q4k_vnni_mm", meta, N, K);
  return llamita_vnni::matmul_blocks<Q4KBlock>(
      x, N, codes.data_ptr<uint8_t>(), kBlockRows * K / 2,
      reinterpret_cast<const uint16_t*>(meta.data_ptr<uint8_t>()), (K / kSuper) * kMetaBytes / 2);
}

// The dense weight (N, K) in float32 or bfloat16: W = q (d sc) - dmin m as one fused
// multiply-subtract; q (d sc) is exact in float32, so this rounds once, as GGML's mul-then-sub.
at::Tensor q4k_vnni_dequantize(const at::Tensor& codes, const at::Tensor& meta, at::ScalarType dtype) {
  const int64_t N = codes.size(0), K = codes.size(1) * 2;
  at::Tensor out = llamita_vnni::dequantized("q4k_vnni_dequantize", codes, at::kByte, meta, N, K, dtype,
                                             at::kByte);
  check_meta("q4k_vnni_dequantize", meta, N, K);
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
  check_shape("q4k_vnni_pack_ggml", N, K);
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

}  // namespace

TORCH_LIBRARY_FRAGMENT(llamita, m) {
  m.def("q4k_vnni_mm(Tensor x, Tensor codes, Tensor meta) -> Tensor");
  m.def("q4k_vnni_dequantize(Tensor codes, Tensor meta, ScalarType dtype) -> Tensor");
  m.def("q4k_vnni_pack_ggml(Tensor raw, int rows, int cols) -> (Tensor, Tensor)");
}
TORCH_LIBRARY_IMPL(llamita, CPU, m) {
  m.impl("q4k_vnni_mm", q4k_vnni_mm);
  m.impl("q4k_vnni_dequantize", q4k_vnni_dequantize);
  m.impl("q4k_vnni_pack_ggml", q4k_vnni_pack_ggml);
}
