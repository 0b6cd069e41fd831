// llamita's matmul kernels in NEON with the dot-product extension (AArch64, armv8.2-a+dotprod,
// `asimddp` in /proc/cpuinfo): the activation quantizer and one 16-row block of every layout
// ("vnni" int4, "vnni_k" Q4_K, "vnni" int8, "vnni_q6k" Q6_K; layout.h) for ROWS rows of x.
// Needs no torch: mm_neon.cpp makes torch operators of it, and tests/kernels/neon_harness.cpp
// checks it under qemu-aarch64 on machines without an ARM CPU.
//
// Method, as the x86 levels: activations quantized to int8 per 32 (the same bytes: d = max|x| /
// 127, xq = round-half-even(x / d)), integer dot products exact in int32, then the float32
// steps of the x86 kernels in the same order (so an ARM machine returns the x86 bits). A
// 16-row block is four quarters of 4 rows here: bytes 16p..16p+15 of a 64-byte chunk are rows
// 4p..4p+3, one 32-bit lane each, as sdot wants them. sdot multiplies signed bytes: the 4- and
// 6-bit codes (0..15, 0..63) and the int8 weights all fit, so no offset is needed.
#pragma once

#include "layout.h"

#include <arm_neon.h>

#include <cstdint>
#include <cstring>

namespace LLAMITA_OPS {

// Tiles of up to 2 rows of x: 2 x 4 integer and 2 x 4 float accumulators with the codes fit
// NEON's 32 registers.
constexpr int kNeonMaxTile = 2;

inline float32x4_t bf16x4_to_float(const uint16_t* p) {
  return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16));
}

inline float32x4_t halves4_to_float(const uint8_t* p) {  // 4 f16 (little-endian bytes)
  return vcvt_f32_f16(vreinterpret_f16_u8(vld1_u8(p)));
}

inline float32x4_t bytes4_to_float(const uint8_t* p) {  // 4 unsigned bytes
  uint32_t v;
  std::memcpy(&v, p, 4);
  return vcvtq_f32_u32(vmovl_u16(vget_low_u16(vmovl_u8(vcreate_u8(v)))));
}

inline int32x4_t sbytes4_to_int(const uint8_t* p) {  // 4 signed bytes
  uint32_t v;
  std::memcpy(&v, p, 4);
  return vmovl_s16(vget_low_s16(vmovl_s8(vreinterpret_s8_u8(vcreate_u8(v)))));
}

inline int8x16_t bcast4(const int8_t* p) {  // 4 activation bytes into every 32-bit lane
  int32_t v;
  std::memcpy(&v, p, 4);
  return vreinterpretq_s8_s32(vdupq_n_s32(v));
}

inline float32x4_t load_x4(const void* x, bool bf16, int64_t at) {
  if (bf16) return bf16x4_to_float(static_cast<const uint16_t*>(x) + at);
  return vld1q_f32(static_cast<const float*>(x) + at);
}

// x float32 or bfloat16 (rows, K) -> xq int8 (rows, K); d (rows, K/32); qsum (rows, K/32) the
// exact sums of xq: the bytes of simd256.h's and vnni.h's.
inline void quantize_activations(const void* x, bool bf16, int64_t rows, int64_t K, int8_t* xq,
                                 float* d, int32_t* qsum) {
  const int64_t groups = rows * (K / kGroup);
  for (int64_t i = 0; i < groups; ++i) {
    float32x4_t v[8];
    float32x4_t amax = vdupq_n_f32(0.0f);
    for (int j = 0; j < 8; ++j) {
      v[j] = load_x4(x, bf16, i * kGroup + 4 * j);
      amax = vmaxq_f32(amax, vabsq_f32(v[j]));
    }
    const float m = vmaxvq_f32(amax);
    const float32x4_t inv = vdupq_n_f32(m > 0.0f ? 127.0f / m : 0.0f);
    int32x4_t sum = vdupq_n_s32(0);
    for (int j = 0; j < 8; j += 2) {
      const int32x4_t a = vcvtnq_s32_f32(vmulq_f32(v[j], inv));  // nearest, ties to even
      const int32x4_t b = vcvtnq_s32_f32(vmulq_f32(v[j + 1], inv));
      sum = vaddq_s32(sum, vaddq_s32(a, b));
      vst1_s8(xq + i * kGroup + 4 * j, vqmovn_s16(vcombine_s16(vqmovn_s32(a), vqmovn_s32(b))));
    }
    d[i] = m / 127.0f;
    qsum[i] = vaddvq_s32(sum);
  }
}

// The numbers of a 4-bit layout for rows 4p..4p+3 and group g: W = (q - kCodeOffset) s + z,
// given as s and offset = z - kCodeOffset s (as mm256.cpp's AffineScales and KScales).
struct AffineScalesNeon {  // "vnni": bfloat16 (K/32, 2, 16) per block, 16 s then 16 z
  static void quarter(const uint16_t* sb, int64_t g, int p, float32x4_t& s, float32x4_t& offset) {
    const uint16_t* at = sb + g * 2 * kBlockRows + 4 * p;
    s = bf16x4_to_float(at);
    offset = vfmaq_f32(bf16x4_to_float(at + kBlockRows), vdupq_n_f32(-8.0f), s);  // z - 8 s
  }
};

struct KScalesNeon {  // "vnni_k": s = d sc, offset = -(dmin m)
  static void quarter(const uint16_t* sb, int64_t g, int p, float32x4_t& s, float32x4_t& offset) {
    const uint8_t* mb = reinterpret_cast<const uint8_t*>(sb) + (g / kSubBlocks) * kMetaBytes;
    const int64_t j = g % kSubBlocks;
    s = vmulq_f32(bytes4_to_float(mb + kBlockRows * j + 4 * p), halves4_to_float(mb + kDAt + 8 * p));
    offset = vnegq_f32(vmulq_f32(bytes4_to_float(mb + kMinsAt + kBlockRows * j + 4 * p),
                                 halves4_to_float(mb + kDminAt + 8 * p)));
  }
};

// One 16-row block of a 4-bit layout for ROWS rows of x:
//   y[m, n] = sum_g (s d_x) * sum_k q xq  +  offset * (d_x * sum_k xq)
template <int ROWS, class Scales>
struct Q4BlockNeon {
  static void run(const int8_t* xq, const float* d, const int32_t* qsum, int64_t K,
                  const uint8_t* codes, const uint16_t* scales, float* y, int64_t ldy) {
    const int64_t groups = K / kGroup;
    const uint8x16_t low_nibble = vdupq_n_u8(0x0F);
    float32x4_t total[ROWS][4];
    for (int m = 0; m < ROWS; ++m)
      for (int p = 0; p < 4; ++p) total[m][p] = vdupq_n_f32(0.0f);
    for (int64_t g = 0; g < groups; ++g) {
      int32x4_t dot[ROWS][4];
      for (int m = 0; m < ROWS; ++m)
        for (int p = 0; p < 4; ++p) dot[m][p] = vdupq_n_s32(0);
      const uint8_t* chunk = codes + g * kBlockRows * kGroup / 2;
      for (int c = 0; c < 4; ++c) {
        prefetch_ahead(chunk + c * 64);
        for (int p = 0; p < 4; ++p) {
          const uint8x16_t v = vld1q_u8(chunk + c * 64 + 16 * p);
          const int8x16_t lo = vreinterpretq_s8_u8(vandq_u8(v, low_nibble));
          const int8x16_t hi = vreinterpretq_s8_u8(vshrq_n_u8(v, 4));
          for (int m = 0; m < ROWS; ++m) {
            const int8_t* xm = xq + m * K + g * kGroup + c * 8;
            dot[m][p] = vdotq_s32(vdotq_s32(dot[m][p], lo, bcast4(xm)), hi, bcast4(xm + 4));
          }
        }
      }
      for (int p = 0; p < 4; ++p) {
        float32x4_t s, offset;
        Scales::quarter(scales, g, p, s, offset);
        for (int m = 0; m < ROWS; ++m) {
          const float dm = d[m * groups + g];
          total[m][p] = vfmaq_f32(total[m][p], vcvtq_f32_s32(dot[m][p]), vmulq_f32(s, vdupq_n_f32(dm)));
          const float xs = dm * static_cast<float>(qsum[m * groups + g]);  // d * sum xq
          total[m][p] = vfmaq_f32(total[m][p], offset, vdupq_n_f32(xs));
        }
      }
    }
    for (int m = 0; m < ROWS; ++m)
      for (int p = 0; p < 4; ++p) vst1q_f32(y + m * ldy + 4 * p, total[m][p]);
  }
};

template <int ROWS>
using Q4AffineNeon = Q4BlockNeon<ROWS, AffineScalesNeon>;
template <int ROWS>
using Q4KNeon = Q4BlockNeon<ROWS, KScalesNeon>;

// One 16-row block of int8 weights for ROWS rows of x, the float32 steps of the x86 kernels.
// BLOCK_SCALES false: one bfloat16 scale per row:  y[m, n] = s[n] * sum_g d[m, g] * sum_k w xq
// BLOCK_SCALES true: layout "vnni_q8b" (GGML Q8_0 in its own blocks, common.h: float16 d_w
// (K/32, 16) per block):  y[m, n] = sum_g float(sum_k w xq) * (d_w[n, g] * d[m, g])
template <int ROWS, bool BLOCK_SCALES>
struct Q8KernelNeon {
  static void run(const int8_t* xq, const float* d, const int32_t* /*qsum*/, int64_t K,
                  const uint8_t* codes, const uint16_t* scales, float* y, int64_t ldy) {
    const int64_t groups = K / kGroup;
    float32x4_t total[ROWS][4];
    for (int m = 0; m < ROWS; ++m)
      for (int p = 0; p < 4; ++p) total[m][p] = vdupq_n_f32(0.0f);
    for (int64_t g = 0; g < groups; ++g) {
      int32x4_t dot[ROWS][4];
      for (int m = 0; m < ROWS; ++m)
        for (int p = 0; p < 4; ++p) dot[m][p] = vdupq_n_s32(0);
      const int8_t* chunk = reinterpret_cast<const int8_t*>(codes) + g * kBlockRows * kGroup;
      for (int c = 0; c < 8; ++c) {
        prefetch_ahead(codes + g * kBlockRows * kGroup + c * 64);
        for (int p = 0; p < 4; ++p) {
          const int8x16_t w = vld1q_s8(chunk + c * 64 + 16 * p);
          for (int m = 0; m < ROWS; ++m) dot[m][p] = vdotq_s32(dot[m][p], w, bcast4(xq + m * K + g * kGroup + c * 4));
        }
      }
      [[maybe_unused]] const uint8_t* dw = reinterpret_cast<const uint8_t*>(scales + g * kBlockRows);
      for (int m = 0; m < ROWS; ++m) {
        const float32x4_t dm = vdupq_n_f32(d[m * groups + g]);
        for (int p = 0; p < 4; ++p) {
          if constexpr (BLOCK_SCALES) {
            const float32x4_t scale = vmulq_f32(halves4_to_float(dw + 8 * p), dm);
            total[m][p] = vfmaq_f32(total[m][p], vcvtq_f32_s32(dot[m][p]), scale);
          } else {
            total[m][p] = vfmaq_f32(total[m][p], vcvtq_f32_s32(dot[m][p]), dm);
          }
        }
      }
    }
    if constexpr (BLOCK_SCALES) {
      for (int m = 0; m < ROWS; ++m)
        for (int p = 0; p < 4; ++p) vst1q_f32(y + m * ldy + 4 * p, total[m][p]);
    } else {
      for (int p = 0; p < 4; ++p) {
        const float32x4_t s = bf16x4_to_float(scales + 4 * p);
        for (int m = 0; m < ROWS; ++m) vst1q_f32(y + m * ldy + 4 * p, vmulq_f32(total[m][p], s));
      }
    }
  }
};

template <int ROWS>
using Q8BlockNeon = Q8KernelNeon<ROWS, false>;
template <int ROWS>
using Q8BBlockNeon = Q8KernelNeon<ROWS, true>;

// One 16-row block of the "vnni_q6k" layout for ROWS rows of x (qsum: sums of xq per 16):
//   isum = sum_j sc_j (sum_k q xq - 32 sum_k xq),  y[m, n] = sum_g float(isum) (d_w d_x)
template <int ROWS>
struct Q6KBlockNeon {
  static void run(const int8_t* xq, const float* d, const int32_t* qsum16, int64_t K,
                  const uint8_t* codes, const uint16_t* meta16, float* y, int64_t ldy) {
    const uint8_t* meta = reinterpret_cast<const uint8_t*>(meta16);
    const int64_t groups = K / kGroup;
    constexpr int64_t kGroupsPerSuper = kSuper / kGroup;
    const uint8x16_t low_nibble = vdupq_n_u8(0x0F), top = vdupq_n_u8(0x30);
    float32x4_t total[ROWS][4];
    for (int m = 0; m < ROWS; ++m)
      for (int p = 0; p < 4; ++p) total[m][p] = vdupq_n_f32(0.0f);
    for (int64_t g = 0; g < groups; ++g) {
      const uint8_t* group = codes + g * kQ6GroupBytes;
      const uint8_t* mb = meta + (g / kGroupsPerSuper) * kQ6MetaBytes;
      const int64_t j = 2 * (g % kGroupsPerSuper);  // the group's first sub-block
      for (int c = 0; c < 6; ++c) prefetch_ahead(group + c * 64);  // 384 bytes a group
      for (int p = 0; p < 4; ++p) {
        int32x4_t dot[ROWS][2];
        for (int m = 0; m < ROWS; ++m) dot[m][0] = dot[m][1] = vdupq_n_s32(0);
        for (int c = 0; c < 4; ++c) {
          const uint8x16_t v = vld1q_u8(group + c * 64 + 16 * p);
          const uint8x16_t t = vld1q_u8(group + 256 + (c / 2) * 64 + 16 * p);
          const uint8x16_t t_lo = c % 2 == 0 ? vshlq_n_u8(t, 4) : t;
          const uint8x16_t t_hi = c % 2 == 0 ? vshlq_n_u8(t, 2) : vshrq_n_u8(t, 2);
          const int8x16_t lo = vreinterpretq_s8_u8(vorrq_u8(vandq_u8(v, low_nibble), vandq_u8(t_lo, top)));
          const int8x16_t hi = vreinterpretq_s8_u8(vorrq_u8(vshrq_n_u8(v, 4), vandq_u8(t_hi, top)));
          for (int m = 0; m < ROWS; ++m) {
            const int8_t* xm = xq + m * K + g * kGroup + c * 8;
            dot[m][c / 2] = vdotq_s32(vdotq_s32(dot[m][c / 2], lo, bcast4(xm)), hi, bcast4(xm + 4));
          }
        }
        const int32x4_t sc0 = sbytes4_to_int(mb + kBlockRows * j + 4 * p);
        const int32x4_t sc1 = sbytes4_to_int(mb + kBlockRows * (j + 1) + 4 * p);
        const float32x4_t dw = halves4_to_float(mb + kQ6DAt + 8 * p);
        for (int m = 0; m < ROWS; ++m) {
          const int32_t* qs = qsum16 + m * 2 * groups + 2 * g;
          const int32x4_t e0 = vsubq_s32(dot[m][0], vdupq_n_s32(32 * qs[0]));
          const int32x4_t e1 = vsubq_s32(dot[m][1], vdupq_n_s32(32 * qs[1]));
          const int32x4_t isum = vaddq_s32(vmulq_s32(sc0, e0), vmulq_s32(sc1, e1));
          const float32x4_t t = vmulq_f32(dw, vdupq_n_f32(d[m * groups + g]));
          total[m][p] = vfmaq_f32(total[m][p], vcvtq_f32_s32(isum), t);
        }
      }
    }
    for (int m = 0; m < ROWS; ++m)
      for (int p = 0; p < 4; ++p) vst1q_f32(y + m * ldy + 4 * p, total[m][p]);
  }
};

}  // namespace LLAMITA_OPS
