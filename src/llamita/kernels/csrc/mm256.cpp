// llamita's matmuls in 256-bit vectors, on the AVX-512 kernels' own layouts ("vnni" int4,
// "vnni_k" Q4_K, "vnni" int8; described in q4_vnni.cpp, q4k_vnni.cpp, q8_vnni.cpp), so loading
// and packing are the same at every level. Compiled twice by native.py: with AVX2 (+FMA, F16C)
// and with AVX-VNNI (256-bit vpdpbusd, __AVXVNNI__ defined); the two differ only in the byte
// dot products (`NibbleDot`, `ByteDot` below).
//
// Method (llama.cpp's on AVX2): activations quantized to int8 per 32 (simd256.h, the same
// bytes as vnni.h), weights times them in integers, then one float32 scale per group. A 16-row
// block of the layouts is two halves of 8 rows here: byte 4r + j of a 64-byte chunk is row r,
// so bytes 32h..32h+31 are rows 8h..8h+7, one 32-bit lane each, as vpdpbusd and
// maddubs + madd want them.
//
// Numerics: every integer sum is exact and the float32 operations are those of the AVX-512
// kernels, in the same order, so every level returns the same bits (the tests check it).

#include "simd256.h"

#include <ATen/core/Tensor.h>
#include <immintrin.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

using LLAMITA_OPS::bf16x8_to_float;
using LLAMITA_OPS::kBlockRows;
using LLAMITA_OPS::kDAt;
using LLAMITA_OPS::kDminAt;
using LLAMITA_OPS::kGroup;
using LLAMITA_OPS::kMetaBytes;
using LLAMITA_OPS::kMinsAt;
using LLAMITA_OPS::kSubBlocks;
using LLAMITA_OPS::kSuper;

// Tiles of up to 4 rows of x: 4 integer and 4 float accumulators, with the codes and their
// nibbles, fit the 16 ymm registers (8 rows spilled).
constexpr int kMaxTile = 4;
// The int8 kernel on AVX2 takes tiles of 8 rows all the same: its sign trick spills a 4-row
// tile already, and reading each weight chunk for 8 rows at once cost 3-12% less CPU time at
// 8-32 rows of the 49152 x 576 head (benchmarks/kernel_rows.py; with vpdpbusd it cost 10-35%
// more, so AVX-VNNI keeps 4).
#ifdef __AVXVNNI__
constexpr int kQ8MaxTile = kMaxTile;
#else
constexpr int kQ8MaxTile = 8;
#endif
// The 4-bit kernels (Q4_0 / Q4_1 / Q4_K) on AVX2 take tiles of 8 rows, from 4 rows on as
// Q4Wide256 (one half block at a time): at 8 and 512 rows of the default model's four matmuls
// it cost 6-13% less CPU time than tiles of 2 and 4 of Q4Block256, and 8 less than 4, 6 or 16
// (benchmarks/kernel_rows.py; docs/performance.md, "GCC's reassociation, wide tiles"). With
// vpdpbusd the wide tiles did not gain, so AVX-VNNI keeps Q4Block256 in tiles of 4.
#ifdef __AVXVNNI__
constexpr int kQ4MaxTile = kMaxTile;
constexpr int kQ4WideFrom = kMaxTile + 1;  // never
#else
constexpr int kQ4MaxTile = 8;
constexpr int kQ4WideFrom = 4;
#endif

// GCC reassociates a chain of integer vector adds (acc + p0 + p1 + ...) into a tree that first
// computes every product of a group, which spills them to the stack: 18% of the 4-bit kernel's
// time at 512 rows on AVX2. An empty asm that "changes" each running sum keeps the chain as
// written; the sums are exact integers, so their order never changed the result.
inline __m256i opaque(__m256i v) {
  asm("" : "+x"(v));
  return v;
}

inline __m256i bcast4(const int8_t* p) {  // 4 activation bytes into every 32-bit lane
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

#ifdef __AVXVNNI__
// 4-bit codes (u8 in 0..15) times int8 activations, 4 products a lane summed in int32.
struct NibbleDot {
  static __m256i zero() { return _mm256_setzero_si256(); }
  static __m256i add(__m256i acc, __m256i codes, __m256i x) { return _mm256_dpbusd_avx_epi32(acc, codes, x); }
  static __m256i join(__m256i a, __m256i b) { return _mm256_add_epi32(a, b); }
  static __m256i finish(__m256i acc) { return acc; }
};

// int8 weights times int8 activations: vpdpbusd needs one unsigned operand, so the weight with
// its top bit flipped (w + 128, in 1..255) and the offset 128 * sum(xq) taken back per group.
struct ByteDot {
  static constexpr int32_t kBias = 128;
  static __m256i prepare(__m256i w) { return _mm256_xor_si256(w, _mm256_set1_epi8(static_cast<char>(0x80))); }
  static __m256i add(__m256i acc, __m256i prepared, __m256i /*w*/, __m256i x) {
    return _mm256_dpbusd_avx_epi32(acc, prepared, x);
  }
};
#else
// maddubs sums pairs of u8 x s8 products into int16 (saturating): with codes <= 15 and
// |xq| <= 128 a pair is at most 3840, and the 8 pairs a lane gathers over a group of 32 at most
// 30720 < 32767, so the int16 sums stay exact and one madd per group widens them to int32.
struct NibbleDot {
  static __m256i zero() { return _mm256_setzero_si256(); }
  static __m256i add(__m256i acc, __m256i codes, __m256i x) {
    return opaque(_mm256_add_epi16(acc, _mm256_maddubs_epi16(codes, x)));
  }
  static __m256i join(__m256i a, __m256i b) { return _mm256_add_epi16(a, b); }
  static __m256i finish(__m256i acc) { return _mm256_madd_epi16(acc, _mm256_set1_epi16(1)); }
};

// llama.cpp's sign trick: |w| (unsigned) times xq with w's sign, w x = |w| sign(w) x. A pair is
// at most 2 * 127 * 128 = 32512, exact in int16, widened to int32 at once (two would overflow).
// The weight codes are in -127..127 (int8.py clamps them), so |w| fits a byte.
struct ByteDot {
  static constexpr int32_t kBias = 0;
  static __m256i prepare(__m256i w) { return _mm256_sign_epi8(w, w); }
  static __m256i add(__m256i acc, __m256i prepared, __m256i w, __m256i x) {
    const __m256i pairs = _mm256_maddubs_epi16(prepared, _mm256_sign_epi8(x, w));
    return opaque(_mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1))));
  }
};
#endif

// Q6_K's 6-bit codes (u8 in 0..63) of two 4-byte halves (low, high nibble codes) times their
// activations, summed per lane in int32. maddubs pairs are at most 2 * 63 * 128 = 16128, so
// the two chunks' int16 sums (<= 32256) stay exact before one madd widens them.
inline __m256i six_bit_dot(__m256i acc, __m256i lo, __m256i x_lo, __m256i hi, __m256i x_hi) {
#ifdef __AVXVNNI__
  return _mm256_dpbusd_avx_epi32(_mm256_dpbusd_avx_epi32(acc, lo, x_lo), hi, x_hi);
#else
  const __m256i pairs = _mm256_add_epi16(_mm256_maddubs_epi16(lo, x_lo), _mm256_maddubs_epi16(hi, x_hi));
  return opaque(_mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1))));
#endif
}

inline __m128i load128(const void* p) { return _mm_loadu_si128(static_cast<const __m128i*>(p)); }

inline __m256 bytes8_to_float(const uint8_t* p) {  // 8 unsigned bytes as float32
  return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(static_cast<const __m128i*>(static_cast<const void*>(p)))));
}

inline __m256 halves8_to_float(const uint8_t* p) { return _mm256_cvtph_ps(load128(p)); }

inline float half_to_float(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

// The numbers of a 4-bit layout per group g and row: W = (q - kCodeOffset) * s + z.
// `group` gives, for the 8 rows 8h..8h+7, s and the offset z - kCodeOffset * s that multiplies
// d * sum(xq); `row` gives one row's s and z (dequantizing).
struct AffineScales {  // layout "vnni": bfloat16 (K/32, 2, 16) per block, 16 s then 16 z
  static constexpr int kCodeOffset = 8;
  static void group(const uint16_t* sb, int64_t g, int h, __m256& s, __m256& offset) {
    const uint16_t* p = sb + g * 2 * kBlockRows + 8 * h;
    s = bf16x8_to_float(load128(p));
    offset = _mm256_fmadd_ps(_mm256_set1_ps(-8.0f), s, bf16x8_to_float(load128(p + kBlockRows)));  // z - 8 s
  }
  static void row(const uint16_t* sb, int64_t g, int r, float& s, float& z) {
    s = LLAMITA_OPS::bf16_to_float(sb[g * 2 * kBlockRows + r]);
    z = LLAMITA_OPS::bf16_to_float(sb[g * 2 * kBlockRows + kBlockRows + r]);
  }
};

struct KScales {  // layout "vnni_k": s = d sc, z = -dmin m (both products exact in float32)
  static constexpr int kCodeOffset = 0;
  static const uint8_t* meta(const uint16_t* sb, int64_t g) {
    return reinterpret_cast<const uint8_t*>(sb) + (g / kSubBlocks) * kMetaBytes;
  }
  static void group(const uint16_t* sb, int64_t g, int h, __m256& s, __m256& offset) {
    const uint8_t* mb = meta(sb, g);
    const int64_t j = g % kSubBlocks;
    s = _mm256_mul_ps(bytes8_to_float(mb + kBlockRows * j + 8 * h), halves8_to_float(mb + kDAt + 16 * h));
    const __m256 mins = _mm256_mul_ps(bytes8_to_float(mb + kMinsAt + kBlockRows * j + 8 * h),
                                      halves8_to_float(mb + kDminAt + 16 * h));
    offset = _mm256_xor_ps(mins, _mm256_set1_ps(-0.0f));  // exact negation
  }
  static void row(const uint16_t* sb, int64_t g, int r, float& s, float& z) {
    const uint8_t* mb = meta(sb, g);
    const int64_t j = g % kSubBlocks;
    s = static_cast<float>(mb[kBlockRows * j + r]) * half_to_float(mb + kDAt + 2 * r);
    z = -(static_cast<float>(mb[kMinsAt + kBlockRows * j + r]) * half_to_float(mb + kDminAt + 2 * r));
  }
};

// Independent integer accumulators per (row of x, half block): a dot-product chain's latency
// (5 cycles for vpdpbusd) would otherwise bound a 1-row GEMV at a fraction of the throughput,
// so small tiles split each chain over chunks; the integer sums stay exact whatever the order.
template <int ROWS>
constexpr int kSplit = ROWS >= 4 ? 1 : 4 / ROWS;

// One 16-row block of a 4-bit layout for ROWS rows of x, as two halves of 8 rows: each code
// chunk is unpacked once and used for every row of x.
//   y[m, n] = sum_g (s d_x) * sum_k q xq  +  offset * (d_x * sum_k xq)
template <int ROWS, class Scales>
struct Q4Block256 {
  static void run(const int8_t* xq, const float* d, const int32_t* qsum, int64_t K,
                  const uint8_t* codes, const uint16_t* scales, float* y, int64_t ldy) {
    constexpr int S = kSplit<ROWS>;
    const int64_t groups = K / kGroup;
    const __m256i low_nibble = _mm256_set1_epi8(0x0F);
    __m256 total[ROWS][2];
    for (int m = 0; m < ROWS; ++m) total[m][0] = total[m][1] = _mm256_setzero_ps();
    for (int64_t g = 0; g < groups; ++g) {
      __m256i dot[ROWS][2][S];
      for (int m = 0; m < ROWS; ++m)
        for (int h = 0; h < 2; ++h)
          for (int s = 0; s < S; ++s) dot[m][h][s] = NibbleDot::zero();
      const uint8_t* chunk = codes + g * kBlockRows * kGroup / 2;
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) {
        LLAMITA_OPS::prefetch_ahead(chunk + c * 64);
        for (int h = 0; h < 2; ++h) {
          const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(chunk + c * 64 + 32 * h));
          const __m256i lo = _mm256_and_si256(v, low_nibble);
          const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low_nibble);
          for (int m = 0; m < ROWS; ++m) {
            const int8_t* xm = xq + m * K + g * kGroup + c * 8;
            __m256i& acc = dot[m][h][c % S];
            acc = NibbleDot::add(acc, lo, bcast4(xm));
            acc = NibbleDot::add(acc, hi, bcast4(xm + 4));
          }
        }
      }
      for (int h = 0; h < 2; ++h) {
        __m256 s, offset;
        Scales::group(scales, g, h, s, offset);
        for (int m = 0; m < ROWS; ++m) {
          __m256i sum = dot[m][h][0];  // int16 sums (AVX2) stay exact: <= 30720 in all
          for (int j = 1; j < S; ++j) sum = NibbleDot::join(sum, dot[m][h][j]);
          const float dm = d[m * groups + g];
          const __m256 sd = _mm256_mul_ps(s, _mm256_set1_ps(dm));
          total[m][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(NibbleDot::finish(sum)), sd, total[m][h]);
          const float xs = dm * static_cast<float>(qsum[m * groups + g]);  // d * sum xq
          total[m][h] = _mm256_fmadd_ps(offset, _mm256_set1_ps(xs), total[m][h]);
        }
      }
    }
    for (int m = 0; m < ROWS; ++m)
      for (int h = 0; h < 2; ++h) _mm256_storeu_ps(y + m * ldy + 8 * h, total[m][h]);
  }
};

// Wide tiles (prefill's chunks, batched decode on AVX2): the block's two halves of 8 rows one
// after the other, so a tile holds ROWS integer and ROWS float accumulators (Q4Block256 holds
// both halves'), and 8 rows of x share each unpacked code chunk. Same sums, same float32
// steps per output, so the same bits.
template <int ROWS, class Scales>
struct Q4Wide256 {
  static void run(const int8_t* xq, const float* d, const int32_t* qsum, int64_t K,
                  const uint8_t* codes, const uint16_t* scales, float* y, int64_t ldy) {
    const int64_t groups = K / kGroup;
    const __m256i low_nibble = _mm256_set1_epi8(0x0F);
    thread_local std::vector<float> offset_sums;
    if (offset_sums.size() < static_cast<size_t>(ROWS * groups)) offset_sums.resize(ROWS * groups);
    float* xsum = offset_sums.data();
    for (int64_t i = 0; i < ROWS * groups; ++i) xsum[i] = d[i] * static_cast<float>(qsum[i]);  // d * sum xq
    for (int h = 0; h < 2; ++h) {
      __m256 total[ROWS];
      for (int m = 0; m < ROWS; ++m) total[m] = _mm256_setzero_ps();
      for (int64_t g = 0; g < groups; ++g) {
        __m256i dot[ROWS];
        for (int m = 0; m < ROWS; ++m) dot[m] = NibbleDot::zero();
        const uint8_t* chunk = codes + g * kBlockRows * kGroup / 2 + 32 * h;
#pragma GCC unroll 4
        for (int c = 0; c < 4; ++c) {
          if (h == 0) LLAMITA_OPS::prefetch_ahead(chunk + c * 64);  // the second half reads the same lines
          const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(chunk + c * 64));
          const __m256i lo = _mm256_and_si256(v, low_nibble);
          const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low_nibble);
          for (int m = 0; m < ROWS; ++m) {
            const int8_t* xm = xq + m * K + g * kGroup + c * 8;
            dot[m] = NibbleDot::add(NibbleDot::add(dot[m], lo, bcast4(xm)), hi, bcast4(xm + 4));
          }
        }
        __m256 s, offset;
        Scales::group(scales, g, h, s, offset);
        for (int m = 0; m < ROWS; ++m) {
          const float dm = d[m * groups + g];
          const __m256 sd = _mm256_mul_ps(s, _mm256_set1_ps(dm));
          total[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(NibbleDot::finish(dot[m])), sd, total[m]);
          total[m] = _mm256_fmadd_ps(offset, _mm256_broadcast_ss(xsum + m * groups + g), total[m]);
        }
      }
      for (int m = 0; m < ROWS; ++m) _mm256_storeu_ps(y + m * ldy + 8 * h, total[m]);
    }
  }
};

template <int ROWS, class Scales>
using Q4Tile256 = std::conditional_t<(ROWS >= kQ4WideFrom), Q4Wide256<ROWS, Scales>, Q4Block256<ROWS, Scales>>;
template <int ROWS>
using Q4Affine256 = Q4Tile256<ROWS, AffineScales>;
template <int ROWS>
using Q4K256 = Q4Tile256<ROWS, KScales>;

// One 16-row block of int8 weights for ROWS rows of x (q8_vnni.cpp's Q8Kernel, its float32
// steps in its order). BLOCK_SCALES false: layout "vnni" of int8.py, one scale per row:
//   y[m, n] = s[n] * sum_g d[m, g] * sum_k w xq
// BLOCK_SCALES true: layout "vnni_q8b" (GGML Q8_0 in its own blocks, common.h); the block scales
// are read inside the loop over rows of x (fewer registers held across it on AVX2):
//   y[m, n] = sum_g float(sum_k w xq) * (d_w[n, g] * d[m, g])
template <int ROWS, bool BLOCK_SCALES>
struct Q8Kernel256 {
  static void run(const int8_t* xq, const float* d, const int32_t* qsum, int64_t K,
                  const uint8_t* codes, const uint16_t* scales, float* y, int64_t ldy) {
    constexpr int S = kSplit<ROWS>;
    const int64_t groups = K / kGroup;
    __m256 total[ROWS][2];
    for (int m = 0; m < ROWS; ++m) total[m][0] = total[m][1] = _mm256_setzero_ps();
    for (int64_t g = 0; g < groups; ++g) {
      __m256i dot[ROWS][2][S];
      for (int m = 0; m < ROWS; ++m)
        for (int h = 0; h < 2; ++h)
          for (int s = 0; s < S; ++s) dot[m][h][s] = _mm256_setzero_si256();
      const uint8_t* chunk = codes + g * kBlockRows * kGroup;
#pragma GCC unroll 8
      for (int c = 0; c < 8; ++c) {
        LLAMITA_OPS::prefetch_ahead(chunk + c * 64);
        for (int h = 0; h < 2; ++h) {
          const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(chunk + c * 64 + 32 * h));
          const __m256i prepared = ByteDot::prepare(w);
          for (int m = 0; m < ROWS; ++m) {
            __m256i& acc = dot[m][h][c % S];
            acc = ByteDot::add(acc, prepared, w, bcast4(xq + m * K + g * kGroup + c * 4));
          }
        }
      }
      for (int m = 0; m < ROWS; ++m) {
        const __m256i bias = _mm256_set1_epi32(ByteDot::kBias * qsum[m * groups + g]);
        const __m256 dm = _mm256_set1_ps(d[m * groups + g]);
        for (int h = 0; h < 2; ++h) {
          __m256i sum = dot[m][h][0];
          for (int j = 1; j < S; ++j) sum = _mm256_add_epi32(sum, dot[m][h][j]);
          const __m256 exact = _mm256_cvtepi32_ps(_mm256_sub_epi32(sum, bias));
          if constexpr (BLOCK_SCALES) {
            const __m256 scale = _mm256_mul_ps(_mm256_cvtph_ps(load128(scales + g * kBlockRows + 8 * h)), dm);
            total[m][h] = _mm256_fmadd_ps(exact, scale, total[m][h]);
          } else {
            total[m][h] = _mm256_fmadd_ps(exact, dm, total[m][h]);
          }
        }
      }
    }
    if constexpr (BLOCK_SCALES) {
      for (int m = 0; m < ROWS; ++m)
        for (int h = 0; h < 2; ++h) _mm256_storeu_ps(y + m * ldy + 8 * h, total[m][h]);
    } else {
      for (int h = 0; h < 2; ++h) {
        const __m256 s = bf16x8_to_float(load128(scales + 8 * h));
        for (int m = 0; m < ROWS; ++m) _mm256_storeu_ps(y + m * ldy + 8 * h, _mm256_mul_ps(total[m][h], s));
      }
    }
  }
};

template <int ROWS>
using Q8Block256 = Q8Kernel256<ROWS, false>;
template <int ROWS>
using Q8BBlock256 = Q8Kernel256<ROWS, true>;

// One 16-row block of the "vnni_q6k" layout (q6k_vnni.cpp: the numerics and the layout) for
// ROWS rows of x, as two halves of 8 rows, with the same integer sums and float32 steps as the
// AVX-512 kernel.
template <int ROWS>
struct Q6KBlock256 {
  static void run(const int8_t* xq, const float* d, const int32_t* qsum16, int64_t K,
                  const uint8_t* codes, const uint16_t* meta16, float* y, int64_t ldy) {
    const uint8_t* meta = reinterpret_cast<const uint8_t*>(meta16);
    const int64_t groups = K / kGroup;
    constexpr int64_t kGroupsPerSuper = kSuper / kGroup;
    const __m256i low_nibble = _mm256_set1_epi8(0x0F), top = _mm256_set1_epi8(0x30);
    __m256 total[ROWS][2];
    for (int m = 0; m < ROWS; ++m) total[m][0] = total[m][1] = _mm256_setzero_ps();
    for (int64_t g = 0; g < groups; ++g) {
      const uint8_t* group = codes + g * LLAMITA_OPS::kQ6GroupBytes;
      const uint8_t* mb = meta + (g / kGroupsPerSuper) * LLAMITA_OPS::kQ6MetaBytes;
      const int64_t j = 2 * (g % kGroupsPerSuper);  // the group's first sub-block
      for (int c = 0; c < 6; ++c) LLAMITA_OPS::prefetch_ahead(group + c * 64);  // 384 bytes a group
      for (int h = 0; h < 2; ++h) {
        __m256i dot[ROWS][2];
        for (int m = 0; m < ROWS; ++m) dot[m][0] = dot[m][1] = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int c = 0; c < 4; ++c) {
          const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(group + c * 64 + 32 * h));
          const __m256i t = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(group + 256 + (c / 2) * 64 + 32 * h));
          const __m256i t_lo = c % 2 == 0 ? _mm256_slli_epi16(t, 4) : t;
          const __m256i t_hi = c % 2 == 0 ? _mm256_slli_epi16(t, 2) : _mm256_srli_epi16(t, 2);
          const __m256i lo = _mm256_or_si256(_mm256_and_si256(v, low_nibble), _mm256_and_si256(t_lo, top));
          const __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v, 4), low_nibble),
                                             _mm256_and_si256(t_hi, top));
          for (int m = 0; m < ROWS; ++m) {
            const int8_t* xm = xq + m * K + g * kGroup + c * 8;
            dot[m][c / 2] = six_bit_dot(dot[m][c / 2], lo, bcast4(xm), hi, bcast4(xm + 4));
          }
        }
        const __m256i sc0 = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(mb + kBlockRows * j + 8 * h)));
        const __m256i sc1 = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(mb + kBlockRows * (j + 1) + 8 * h)));
        const __m256 dw = halves8_to_float(mb + LLAMITA_OPS::kQ6DAt + 16 * h);
        for (int m = 0; m < ROWS; ++m) {
          const int32_t* qs = qsum16 + m * 2 * groups + 2 * g;
          const __m256i e0 = _mm256_sub_epi32(dot[m][0], _mm256_set1_epi32(32 * qs[0]));
          const __m256i e1 = _mm256_sub_epi32(dot[m][1], _mm256_set1_epi32(32 * qs[1]));
          const __m256i isum = _mm256_add_epi32(_mm256_mullo_epi32(sc0, e0), _mm256_mullo_epi32(sc1, e1));
          const __m256 t = _mm256_mul_ps(dw, _mm256_set1_ps(d[m * groups + g]));
          total[m][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), t, total[m][h]);
        }
      }
    }
    for (int m = 0; m < ROWS; ++m)
      for (int h = 0; h < 2; ++h) _mm256_storeu_ps(y + m * ldy + 8 * h, total[m][h]);
  }
};

at::Tensor q6k_vnni_mm(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& meta) {
  return LLAMITA_OPS::q6k_mm<Q6KBlock256, kMaxTile>(x, codes, meta, LLAMITA_OPS::quantize_activations);
}

at::Tensor q4_vnni_mm(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales) {
  return LLAMITA_OPS::q4_mm<Q4Affine256, kQ4MaxTile>(x, codes, scales, LLAMITA_OPS::quantize_activations);
}

at::Tensor q4k_vnni_mm(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& meta) {
  return LLAMITA_OPS::q4k_mm<Q4K256, kQ4MaxTile>(x, codes, meta, LLAMITA_OPS::quantize_activations);
}

at::Tensor q8_vnni_mm(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales) {
  return LLAMITA_OPS::q8_mm<Q8Block256, kQ8MaxTile>(x, codes, scales, LLAMITA_OPS::quantize_activations);
}

at::Tensor q8b_vnni_mm(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales) {
  return LLAMITA_OPS::q8b_mm<Q8BBlock256, kQ8MaxTile>(x, codes, scales, LLAMITA_OPS::quantize_activations);
}

// The dense weight (N, K) of a 4-bit layout in float32 or bfloat16, for prefill's dense
// matmul: W = (q - kCodeOffset) s + z as one FMA ((q - offset) s is exact in float32, so this
// rounds once), the values of the AVX-512 kernels' dequantize.
template <class Scales>
at::Tensor dequantize_q4(at::Tensor out, const at::Tensor& codes, const at::Tensor& scales, int64_t block_scales) {
  const int64_t N = codes.size(0), K = codes.size(1) * 2, groups = K / kGroup;
  const at::ScalarType dtype = out.scalar_type();
  const uint8_t* cp = codes.data_ptr<uint8_t>();
  const uint16_t* sp = reinterpret_cast<const uint16_t*>(scales.data_ptr());
  void* op_out = out.data_ptr();
  const bool bf16 = dtype == at::kBFloat16;
  at::parallel_for(0, N / kBlockRows, 1, [&](int64_t b0, int64_t b1) {
    const __m128i low_nibble = _mm_set1_epi8(0x0F);
    const __m256 code_offset = _mm256_set1_ps(static_cast<float>(Scales::kCodeOffset));
    for (int64_t b = b0; b < b1; ++b) {
      const uint16_t* sb = sp + b * block_scales;
      for (int64_t g = 0; g < groups; ++g) {
        const uint8_t* chunk = cp + b * kBlockRows * K / 2 + g * kBlockRows * kGroup / 2;
        for (int r = 0; r < kBlockRows; ++r) {
          // Row r's 4 bytes of each chunk c (k = 8c..8c+7: low nibbles 8c..8c+3, high ones
          // 8c+4..8c+7); 32-bit pieces interleaved low/high put k in order.
          int32_t piece[4];
          for (int c = 0; c < 4; ++c) std::memcpy(&piece[c], chunk + c * 64 + 4 * r, 4);
          const __m128i v = load128(piece);
          const __m128i lo = _mm_and_si128(v, low_nibble);
          const __m128i hi = _mm_and_si128(_mm_srli_epi16(v, 4), low_nibble);
          float s, z;
          Scales::row(sb, g, r, s, z);
          const __m256 sv = _mm256_set1_ps(s), zv = _mm256_set1_ps(z);
          const int64_t at = (b * kBlockRows + r) * K + g * kGroup;
          for (int half = 0; half < 2; ++half) {
            const __m128i q = half == 0 ? _mm_unpacklo_epi32(lo, hi) : _mm_unpackhi_epi32(lo, hi);
            for (int e = 0; e < 2; ++e) {
              const __m128i q8 = e == 0 ? q : _mm_srli_si128(q, 8);
              const __m256 qf = _mm256_sub_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q8)), code_offset);
              LLAMITA_OPS::store_weights8(_mm256_fmadd_ps(qf, sv, zv), op_out, at + 16 * half + 8 * e, bf16);
            }
          }
        }
      }
    }
  });
  return out;
}

at::Tensor q4_vnni_dequantize(const at::Tensor& codes, const at::Tensor& scales, at::ScalarType dtype) {
  at::Tensor out = LLAMITA_OPS::dequantized_q4(codes, scales, dtype);
  return dequantize_q4<AffineScales>(out, codes, scales, (codes.size(1) * 2 / kGroup) * 2 * kBlockRows);
}

at::Tensor q4k_vnni_dequantize(const at::Tensor& codes, const at::Tensor& meta, at::ScalarType dtype) {
  at::Tensor out = LLAMITA_OPS::dequantized_q4k(codes, meta, dtype);
  return dequantize_q4<KScales>(out, codes, meta, (codes.size(1) * 2 / kSuper) * kMetaBytes / 2);
}

// The dense int8 weight W = w * s (exact in float32), reading the blocks in place.
at::Tensor q8_vnni_dequantize(const at::Tensor& codes, const at::Tensor& scales, at::ScalarType dtype) {
  const int64_t N = codes.size(0), K = codes.size(1);
  at::Tensor out = LLAMITA_OPS::dequantized_q8(codes, scales, dtype);
  const int8_t* cp = codes.data_ptr<int8_t>();
  const uint16_t* sp = reinterpret_cast<const uint16_t*>(scales.data_ptr());
  void* op_out = out.data_ptr();
  const bool bf16 = dtype == at::kBFloat16;
  at::parallel_for(0, N / kBlockRows, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int8_t* block = cp + b * kBlockRows * K;
      for (int r = 0; r < kBlockRows; ++r) {
        const __m256 s = _mm256_set1_ps(LLAMITA_OPS::bf16_to_float(sp[b * kBlockRows + r]));
        const int64_t at = (b * kBlockRows + r) * K;
        for (int64_t k = 0; k < K; k += 8) {  // 2 chunks of 4 k: row r's bytes 4r..4r+3 of each
          int32_t piece[2];
          for (int c = 0; c < 2; ++c) std::memcpy(&piece[c], block + (k / 4 + c) * 64 + 4 * r, 4);
          const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(piece));
          const __m256 w = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), s);
          LLAMITA_OPS::store_weights8(w, op_out, at + k, bf16);
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
  m.def("q4k_vnni_mm(Tensor x, Tensor codes, Tensor meta) -> Tensor");
  m.def("q4k_vnni_dequantize(Tensor codes, Tensor meta, ScalarType dtype) -> Tensor");
  m.def("q8_vnni_mm(Tensor x, Tensor codes, Tensor scales) -> Tensor");
  m.def("q8_vnni_dequantize(Tensor codes, Tensor scales, ScalarType dtype) -> Tensor");
  m.def("q6k_vnni_mm(Tensor x, Tensor codes, Tensor meta) -> Tensor");
  m.def("q8b_vnni_mm(Tensor x, Tensor codes, Tensor scales) -> Tensor");
}
TORCH_LIBRARY_IMPL(LLAMITA_OPS, CPU, m) {
  m.impl("q4_vnni_mm", q4_vnni_mm);
  m.impl("q4_vnni_dequantize", q4_vnni_dequantize);
  m.impl("q4k_vnni_mm", q4k_vnni_mm);
  m.impl("q4k_vnni_dequantize", q4k_vnni_dequantize);
  m.impl("q8_vnni_mm", q8_vnni_mm);
  m.impl("q8_vnni_dequantize", q8_vnni_dequantize);
  m.impl("q6k_vnni_mm", q6k_vnni_mm);
  m.impl("q8b_vnni_mm", q8b_vnni_mm);
}
