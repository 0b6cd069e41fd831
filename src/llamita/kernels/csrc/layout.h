// The packed layouts of llamita's kernels and the level-neutral pieces that need no torch: the
// constants, the tile loop of the matmul driver, the sums of activations per 16 and the decoding
// of Q6_K codes. common.h adds the torch side; the NEON harness (tests/kernels/neon_harness.cpp)
// builds on this alone.
#pragma once

#include <cstdint>
#include <cstring>

#ifndef LLAMITA_OPS
#define LLAMITA_OPS llamita
#endif

namespace LLAMITA_OPS {

constexpr int64_t kGroup = 32;      // activations (and int4 weights) per scale
constexpr int64_t kBlockRows = 16;  // weight rows per block of every layout: one int32 lane each

// Layout "vnni_k" (q4k_vnni.cpp): per 16-row block and super-block of 256 weights, 320 bytes of
// meta: sc[8][16], m[8][16] (one byte each), then f16 d[16] and dmin[16].
constexpr int64_t kSuper = 256;                     // weights per Q4_K super-block
constexpr int64_t kSubBlocks = kSuper / kGroup;     // 8 groups share one d and dmin
constexpr int64_t kMetaBytes = 2 * kSubBlocks * kBlockRows + 2 * 2 * kBlockRows;  // 320
constexpr int64_t kMinsAt = kSubBlocks * kBlockRows, kDAt = 2 * kMinsAt, kDminAt = kDAt + 2 * kBlockRows;

// Layout "vnni_q6k" (q6k_vnni.cpp): Q6_K's 6-bit codes q (0..63, W = d sc (q - 32)) per 16-row
// block and group of 32 k as 384 bytes: the low nibbles as the "vnni" 4-bit chunks (4 x 64),
// then the top 2 bits as 2 x 64 (chunk h: byte 4r + j holds, 2 bits each from bit 0, those of
// k = 16h + j, 16h + 4 + j, 16h + 8 + j, 16h + 12 + j of row r). Per 16-row block and
// super-block of 256 weights, 288 bytes of meta: int8 sc[16][16] (sub-block of 16, row), then
// f16 d[16]. 6.5625 bits a weight, as Q6_K.
constexpr int64_t kQ6GroupBytes = kBlockRows * kGroup * 3 / 4;  // 384
constexpr int64_t kQ6Subs = kSuper / 16;                        // 16 scales per super-block
constexpr int64_t kQ6DAt = kQ6Subs * kBlockRows;                // 256
constexpr int64_t kQ6MetaBytes = kQ6DAt + 2 * kBlockRows;       // 288

// Each kernel asks for the code bytes kPrefetchAhead past the 64-byte line it reads (into L2),
// one line per line read. A block's arithmetic at several rows of x otherwise waited for its
// codes from memory, then memory sat idle during the arithmetic (the hardware prefetchers stop
// at each 4 KiB page): the default model's 4-bit matmuls, 30 layers of distinct weights, 2
// threads, AVX-512, took 15% less time at 8 rows and 9% less at one (docs/performance.md,
// "Prefetching the codes"). 4096 and 8192 bytes ahead did the same; 1024 and 2048 less.
constexpr int64_t kPrefetchAhead = 4096;
inline void prefetch_ahead(const uint8_t* line) { __builtin_prefetch(line + kPrefetchAhead, 0, 2); }

// Runs Block<TILE> over rows [m, M) of x in tiles of TILE, TILE/2, ..., 1 rows (qsum holds
// sums_per_row values a row).
template <template <int> class Block, int TILE>
inline void run_tiles(int64_t m, int64_t M, const int8_t* xq, const float* d, const int32_t* qsum,
                      int64_t sums_per_row, int64_t K, const uint8_t* codes, const uint16_t* scales,
                      float* y, int64_t N) {
  const int64_t groups = K / kGroup;
  for (; m + TILE <= M; m += TILE) {
    Block<TILE>::run(xq + m * K, d + m * groups, qsum + m * sums_per_row, K, codes, scales, y + m * N, N);
  }
  if constexpr (TILE > 1) run_tiles<Block, TILE / 2>(m, M, xq, d, qsum, sums_per_row, K, codes, scales, y, N);
}

// Row r's numbers of a GGML Q4_K block (f16 d, dmin, 12 bytes of 6-bit scales and mins) into
// a "vnni_k" meta block of 16 rows: sc and m one byte each (GGML's get_scale_min_k4), d, dmin.
inline void q4k_row_meta(const uint8_t* block, int r, uint8_t* mb) {
  std::memcpy(mb + kDAt + 2 * r, block, 2);
  std::memcpy(mb + kDminAt + 2 * r, block + 2, 2);
  const uint8_t* sc = block + 4;
  for (int j = 0; j < kSubBlocks; ++j) {
    const bool low = j < 4;
    mb[kBlockRows * j + r] = low ? sc[j] & 63 : (sc[j + 4] & 0x0F) | ((sc[j - 4] >> 6) << 4);
    mb[kMinsAt + kBlockRows * j + r] = low ? sc[j + 4] & 63 : (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4);
  }
}

// Q6_K's scales cover 16 weights: the sums of xq per 16 (rows * K / 16 of them), in place of
// the quantizer's per 32.
inline void sums_per_16(const int8_t* xq, int64_t n, int32_t* out) {
  for (int64_t i = 0; i < n / 16; ++i) {
    int32_t s = 0;
    for (int j = 0; j < 16; ++j) s += xq[16 * i + j];
    out[i] = s;
  }
}

// Row r's 32 codes (0..63) of group g from a "vnni_q6k" block of 16 rows (q6k_vnni.cpp),
// level-neutral (the dequantize operators of every level read them so).
inline void q6k_row_codes(const uint8_t* group, int r, uint8_t q[32]) {
  for (int c = 0; c < 4; ++c) {
    const uint8_t* lo = group + c * 64 + 4 * r;
    const uint8_t* hi = group + 256 + (c / 2) * 64 + 4 * r;
    const int shift = 4 * (c % 2);
    for (int j = 0; j < 4; ++j) {
      q[8 * c + j] = (lo[j] & 0x0F) | (((hi[j] >> shift) & 3) << 4);
      q[8 * c + 4 + j] = (lo[j] >> 4) | (((hi[j] >> (shift + 2)) & 3) << 4);
    }
  }
}

// IEEE half -> float, every value (subnormals, infinities, NaN) as the hardware converts it.
inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1F, mant = h & 0x3FF, bits;
  if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (mant << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {  // subnormal: normalize
    exp = 113;
    while ((mant & 0x400) == 0) {
      mant <<= 1;
      --exp;
    }
    bits = sign | (exp << 23) | ((mant & 0x3FF) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// float -> bfloat16 to nearest even, NaN as 0x7FC0: the bits of simd256.h's float_to_bf16x8.
inline uint16_t float_to_bf16(float f) {
  if (f != f) return 0x7FC0;
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  return static_cast<uint16_t>((bits + ((bits >> 16) & 1) + 0x7FFF) >> 16);
}

}  // namespace LLAMITA_OPS
