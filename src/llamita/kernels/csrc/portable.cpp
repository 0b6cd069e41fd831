// Load-time packing and dequantization in plain C++, for every level: Q6_K's at every level
// ("vnni_q6k", q6k_vnni.cpp), and the 4-bit and int8 layouts' for NEON (x86 has them in SIMD:
// pack.cpp, mm256.cpp, q4_vnni.cpp, ...). On x86 the latter are registered as portable_* so
// their tests compare them with the SIMD ones here (tests/kernels/test_portable_pack.py); on
// AArch64 under the plain names, beside mm_neon.cpp's matmuls.

#include "common.h"

#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>

namespace {

using LLAMITA_OPS::float_to_bf16;
using LLAMITA_OPS::half_to_float;
using LLAMITA_OPS::kBlockRows;
using LLAMITA_OPS::kDAt;
using LLAMITA_OPS::kDminAt;
using LLAMITA_OPS::kGroup;
using LLAMITA_OPS::kMetaBytes;
using LLAMITA_OPS::kMinsAt;
using LLAMITA_OPS::kQ6DAt;
using LLAMITA_OPS::kQ6GroupBytes;
using LLAMITA_OPS::kQ6MetaBytes;
using LLAMITA_OPS::kQ6Subs;
using LLAMITA_OPS::kSubBlocks;
using LLAMITA_OPS::kSuper;

inline uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

inline void store_weight(void* out, int64_t at, float w, bool bf16) {
  if (bf16) {
    static_cast<uint16_t*>(out)[at] = float_to_bf16(w);
  } else {
    static_cast<float*>(out)[at] = w;
  }
}

// 32 codes of one row and group (weights 0..31, one per byte) into the group's 16 "vnni" bytes
// for row r: byte 64c + 4r + j = q[8c + j] | q[8c + 4 + j] << 4.
inline void put_vnni_nibbles(const uint8_t q[32], uint8_t* chunk, int r) {
  for (int c = 0; c < 4; ++c)
    for (int j = 0; j < 4; ++j) chunk[c * 64 + 4 * r + j] = (q[8 * c + j] & 0x0F) | ((q[8 * c + 4 + j] & 0x0F) << 4);
}

// Row r's 32 codes of a "vnni" group (the inverse of put_vnni_nibbles).
inline void get_vnni_nibbles(const uint8_t* chunk, int r, uint8_t q[32]) {
  for (int c = 0; c < 4; ++c)
    for (int j = 0; j < 4; ++j) {
      const uint8_t byte = chunk[c * 64 + 4 * r + j];
      q[8 * c + j] = byte & 0x0F;
      q[8 * c + 4 + j] = byte >> 4;
    }
}

void check_raw(const char* op, const at::Tensor& raw) {
  TORCH_CHECK(raw.device().is_cpu() && raw.scalar_type() == at::kByte && raw.is_contiguous() && raw.dim() == 1,
              op, ": raw must be contiguous 1-D uint8 on the CPU");
}

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
// float32 and the product rounded once, as GGML's (and quants.py's) dequantization.
at::Tensor q6k_vnni_dequantize(const at::Tensor& codes, const at::Tensor& meta, at::ScalarType dtype) {
  at::Tensor out = LLAMITA_OPS::dequantized_q6k(codes, meta, dtype);
  const int64_t N = out.size(0), K = out.size(1), supers = K / kSuper;
  const uint8_t* cp = codes.data_ptr<uint8_t>();
  const uint8_t* mp = meta.data_ptr<uint8_t>();
  void* op = out.data_ptr();
  const bool bf16 = dtype == at::kBFloat16;
  at::parallel_for(0, N / kBlockRows, 1, [&](int64_t b0, int64_t b1) {
    uint8_t q[kGroup];
    for (int64_t b = b0; b < b1; ++b) {
      for (int64_t sb = 0; sb < supers; ++sb) {
        const uint8_t* mb = mp + (b * supers + sb) * kQ6MetaBytes;
        for (int r = 0; r < kBlockRows; ++r) {
          const float dw = half_to_float(load_u16(mb + kQ6DAt + 2 * r));
          for (int64_t gs = 0; gs < kSuper / kGroup; ++gs) {
            const int64_t g = sb * (kSuper / kGroup) + gs;
            LLAMITA_OPS::q6k_row_codes(cp + b * kBlockRows * K * 3 / 4 + g * kQ6GroupBytes, r, q);
            const int64_t at = (b * kBlockRows + r) * K + g * kGroup;
            for (int half = 0; half < 2; ++half) {  // sub-block 2 gs + half
              const float s = dw * static_cast<float>(static_cast<int8_t>(mb[kBlockRows * (2 * gs + half) + r]));
              for (int e = 0; e < 16; ++e)
                store_weight(op, at + 16 * half + e, s * static_cast<float>(q[16 * half + e] - 32), bf16);
            }
          }
        }
      }
    }
  });
  return out;
}

// GGML Q4_0 / Q4_1 blocks (f16 d, [f16 m,] 16 bytes: weight j low nibble, j + 16 high) into
// the "vnni" layout: s = d, z = m + 8 d (Q4_1) or 0, rounded to bfloat16 (pack.cpp's values).
std::tuple<at::Tensor, at::Tensor> q4_pack_ggml(const at::Tensor& raw, int64_t N, int64_t K, bool has_min) {
  check_raw("q4_vnni_pack_ggml", raw);
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
  at::parallel_for(0, N / kBlockRows, 1, [&](int64_t b0, int64_t b1) {
    uint8_t q[kGroup];
    for (int64_t b = b0; b < b1; ++b) {
      for (int64_t g = 0; g < groups; ++g) {
        uint16_t* sz = sp + (b * groups + g) * 2 * kBlockRows;
        for (int r = 0; r < kBlockRows; ++r) {
          const uint8_t* block = rp + ((b * kBlockRows + r) * groups + g) * block_bytes;
          const uint8_t* qs = block + (has_min ? 4 : 2);
          for (int j = 0; j < 16; ++j) {
            q[j] = qs[j] & 0x0F;
            q[j + 16] = qs[j] >> 4;
          }
          put_vnni_nibbles(q, cp + b * kBlockRows * K / 2 + g * kBlockRows * kGroup / 2, r);
          const float d = half_to_float(load_u16(block));
          sz[r] = float_to_bf16(d);
          sz[kBlockRows + r] = float_to_bf16(has_min ? half_to_float(load_u16(block + 2)) + 8.0f * d : 0.0f);
        }
      }
    }
  });
  return {codes, scales};
}

// GGML Q4_K blocks (f16 d, dmin, 12 bytes of 6-bit scales and mins, 128 bytes: bytes
// 32c..32c+31 hold sub-block 2c in their low nibbles, 2c+1 in their high) into "vnni_k".
std::tuple<at::Tensor, at::Tensor> q4k_pack_ggml(const at::Tensor& raw, int64_t N, int64_t K) {
  check_raw("q4k_vnni_pack_ggml", raw);
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
    uint8_t q[kGroup];
    for (int64_t b = b0; b < b1; ++b) {
      for (int64_t sb = 0; sb < supers; ++sb) {
        uint8_t* mb = mp + (b * supers + sb) * kMetaBytes;
        for (int r = 0; r < kBlockRows; ++r) {
          const uint8_t* block = rp + ((b * kBlockRows + r) * supers + sb) * kBlockBytes;
          LLAMITA_OPS::q4k_row_meta(block, r, mb);
          for (int j = 0; j < kSubBlocks; ++j) {
            const uint8_t* qs = block + 16 + 32 * (j / 2);
            for (int e = 0; e < kGroup; ++e) q[e] = j % 2 == 0 ? qs[e] & 0x0F : qs[e] >> 4;
            put_vnni_nibbles(q, cp + b * kBlockRows * K / 2 + (sb * kSubBlocks + j) * kBlockRows * kGroup / 2, r);
          }
        }
      }
    }
  });
  return {codes, meta};
}

// The dense weight of a 4-bit layout: "vnni" W = fma(q - 8, s, z), "vnni_k" W = fma(q, d sc,
// -(dmin m)): one rounding each, the values of the SIMD dequantizers.
at::Tensor q4_dequantize(const at::Tensor& codes, const at::Tensor& scales, at::ScalarType dtype, bool k_quant) {
  at::Tensor out = k_quant ? LLAMITA_OPS::dequantized_q4k(codes, scales, dtype)
                           : LLAMITA_OPS::dequantized_q4(codes, scales, dtype);
  const int64_t N = codes.size(0), K = codes.size(1) * 2, groups = K / kGroup;
  const uint8_t* cp = codes.data_ptr<uint8_t>();
  const uint8_t* sp = static_cast<const uint8_t*>(scales.data_ptr());
  const int64_t block_scale_bytes = k_quant ? (K / kSuper) * kMetaBytes : groups * 2 * kBlockRows * 2;
  void* op = out.data_ptr();
  const bool bf16 = dtype == at::kBFloat16;
  at::parallel_for(0, N / kBlockRows, 1, [&](int64_t b0, int64_t b1) {
    uint8_t q[kGroup];
    for (int64_t b = b0; b < b1; ++b) {
      const uint8_t* sb = sp + b * block_scale_bytes;
      for (int64_t g = 0; g < groups; ++g) {
        for (int r = 0; r < kBlockRows; ++r) {
          get_vnni_nibbles(cp + b * kBlockRows * K / 2 + g * kBlockRows * kGroup / 2, r, q);
          float s, z, offset;
          if (k_quant) {
            const uint8_t* mb = sb + (g / kSubBlocks) * kMetaBytes;
            const int64_t j = g % kSubBlocks;
            s = static_cast<float>(mb[kBlockRows * j + r]) * half_to_float(load_u16(mb + kDAt + 2 * r));
            z = -(static_cast<float>(mb[kMinsAt + kBlockRows * j + r]) * half_to_float(load_u16(mb + kDminAt + 2 * r)));
            offset = 0.0f;
          } else {
            const uint16_t* sz = reinterpret_cast<const uint16_t*>(sb) + g * 2 * kBlockRows;
            s = LLAMITA_OPS::bf16_to_float(sz[r]);
            z = LLAMITA_OPS::bf16_to_float(sz[kBlockRows + r]);
            offset = 8.0f;
          }
          const int64_t at = (b * kBlockRows + r) * K + g * kGroup;
          for (int e = 0; e < kGroup; ++e) store_weight(op, at + e, std::fma(static_cast<float>(q[e]) - offset, s, z), bf16);
        }
      }
    }
  });
  return out;
}

at::Tensor q4_vnni_dequantize(const at::Tensor& codes, const at::Tensor& scales, at::ScalarType dtype) {
  return q4_dequantize(codes, scales, dtype, false);
}

at::Tensor q4k_vnni_dequantize(const at::Tensor& codes, const at::Tensor& meta, at::ScalarType dtype) {
  return q4_dequantize(codes, meta, dtype, true);
}

// The dense int8 weight W = w s (exact in float32).
at::Tensor q8_vnni_dequantize(const at::Tensor& codes, const at::Tensor& scales, at::ScalarType dtype) {
  const int64_t N = codes.size(0), K = codes.size(1);
  at::Tensor out = LLAMITA_OPS::dequantized_q8(codes, scales, dtype);
  const int8_t* cp = codes.data_ptr<int8_t>();
  const uint16_t* sp = reinterpret_cast<const uint16_t*>(scales.data_ptr());
  void* op = out.data_ptr();
  const bool bf16 = dtype == at::kBFloat16;
  at::parallel_for(0, N / kBlockRows, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      for (int r = 0; r < kBlockRows; ++r) {
        const float s = LLAMITA_OPS::bf16_to_float(sp[b * kBlockRows + r]);
        const int64_t at = (b * kBlockRows + r) * K;
        for (int64_t k = 0; k < K; ++k)
          store_weight(op, at + k, static_cast<float>(cp[b * kBlockRows * K + (k / 4) * 64 + 4 * r + k % 4]) * s, bf16);
      }
    }
  });
  return out;
}

// The dense weight of layout "vnni_q8b" (GGML Q8_0 in its own blocks, common.h): W = d w, exact
// in float32 (an f16 scale times an int8 code), rounded once to bfloat16 if asked; the same
// values as the gguf package's dequantization. Plain C++ at every level (no SIMD version).
at::Tensor q8b_vnni_dequantize(const at::Tensor& codes, const at::Tensor& scales, at::ScalarType dtype) {
  const int64_t N = codes.size(0), K = codes.size(1), groups = K / kGroup;
  at::Tensor out = LLAMITA_OPS::dequantized("q8b_vnni_dequantize", codes, at::kChar, scales, N, K, dtype, at::kHalf);
  TORCH_CHECK(scales.numel() == N * groups, "scales must be (N/16, K/32, 16) float16");
  const int8_t* cp = codes.data_ptr<int8_t>();
  const uint16_t* sp = reinterpret_cast<const uint16_t*>(scales.data_ptr());
  void* op = out.data_ptr();
  const bool bf16 = dtype == at::kBFloat16;
  at::parallel_for(0, N / kBlockRows, 1, [&](int64_t b0, int64_t b1) {
    float row[kGroup];
    for (int64_t b = b0; b < b1; ++b) {
      const int8_t* block = cp + b * kBlockRows * K;
      for (int r = 0; r < kBlockRows; ++r) {
        const int64_t at = (b * kBlockRows + r) * K;
        for (int64_t g = 0; g < groups; ++g) {
          const float s = half_to_float(sp[(b * groups + g) * kBlockRows + r]);
          for (int c = 0; c < 8; ++c)
            for (int j = 0; j < 4; ++j) row[4 * c + j] = static_cast<float>(block[(g * 8 + c) * 64 + 4 * r + j]) * s;
          if (bf16) {
            uint16_t* o = static_cast<uint16_t*>(op) + at + g * kGroup;
            for (int i = 0; i < kGroup; ++i) o[i] = float_to_bf16(row[i]);
          } else {
            std::memcpy(static_cast<float*>(op) + at + g * kGroup, row, sizeof row);
          }
        }
      }
    }
  });
  return out;
}

}  // namespace

#if defined(__aarch64__)
#define LLAMITA_PORTABLE(name) name
#else
#define LLAMITA_PORTABLE(name) "portable_" name
#endif

TORCH_LIBRARY_FRAGMENT(LLAMITA_OPS, m) {
  m.def("q6k_vnni_pack_ggml(Tensor raw, int rows, int cols) -> (Tensor, Tensor)");
  m.def("q6k_vnni_dequantize(Tensor codes, Tensor meta, ScalarType dtype) -> Tensor");
  m.def(LLAMITA_PORTABLE("q4_vnni_pack_ggml") "(Tensor raw, int rows, int cols, bool has_min) -> (Tensor, Tensor)");
  m.def(LLAMITA_PORTABLE("q4k_vnni_pack_ggml") "(Tensor raw, int rows, int cols) -> (Tensor, Tensor)");
  m.def(LLAMITA_PORTABLE("q4_vnni_dequantize") "(Tensor codes, Tensor scales, ScalarType dtype) -> Tensor");
  m.def(LLAMITA_PORTABLE("q4k_vnni_dequantize") "(Tensor codes, Tensor meta, ScalarType dtype) -> Tensor");
  m.def(LLAMITA_PORTABLE("q8_vnni_dequantize") "(Tensor codes, Tensor scales, ScalarType dtype) -> Tensor");
  m.def("q8b_vnni_dequantize(Tensor codes, Tensor scales, ScalarType dtype) -> Tensor");
}
TORCH_LIBRARY_IMPL(LLAMITA_OPS, CPU, m) {
  m.impl("q6k_vnni_pack_ggml", q6k_vnni_pack_ggml);
  m.impl("q6k_vnni_dequantize", q6k_vnni_dequantize);
  m.impl(LLAMITA_PORTABLE("q4_vnni_pack_ggml"), q4_pack_ggml);
  m.impl(LLAMITA_PORTABLE("q4k_vnni_pack_ggml"), q4k_pack_ggml);
  m.impl(LLAMITA_PORTABLE("q4_vnni_dequantize"), q4_vnni_dequantize);
  m.impl(LLAMITA_PORTABLE("q4k_vnni_dequantize"), q4k_vnni_dequantize);
  m.impl(LLAMITA_PORTABLE("q8_vnni_dequantize"), q8_vnni_dequantize);
  m.impl("q8b_vnni_dequantize", q8b_vnni_dequantize);
}
