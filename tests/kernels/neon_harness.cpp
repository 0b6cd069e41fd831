// Checks llamita's NEON kernels (src/llamita/kernels/csrc/neon.h) without torch, on fixed
// pseudo-random inputs: every layout ("vnni" int4, "vnni_k" Q4_K, "vnni" int8, "vnni_q6k" Q6_K,
// "vnni_q8b" Q8_0 in its own blocks)
// at 1, 2, 3, 8 and 13 rows of x against a double-precision statement written here from the
// layouts' documentation (layout.h, q4_vnni.cpp, q4k_vnni.cpp, q8_vnni.cpp, q6k_vnni.cpp), and
// the activation quantizer against its scalar statement, byte for byte.
// Built by tests/kernels/test_neon_harness.py:
//   aarch64-linux-gnu-g++ -O2 -std=c++17 -march=armv8.2-a+dotprod -I src/llamita/kernels/csrc
//       tests/kernels/neon_harness.cpp -o harness && qemu-aarch64 -L /usr/aarch64-linux-gnu harness
// Prints one line per case and "failures: N"; exits 1 when N > 0.
#include "neon.h"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

namespace {

using namespace LLAMITA_OPS;

uint64_t state = 0x9E3779B97F4A7C15ull;
uint32_t next_u32() {  // xorshift64*
  state ^= state >> 12;
  state ^= state << 25;
  state ^= state >> 27;
  return static_cast<uint32_t>((state * 0x2545F4914F6CDD1Dull) >> 32);
}
float uniform() { return static_cast<float>(next_u32()) / 4294967296.0f; }  // [0, 1)
float normalish() { return (uniform() + uniform() + uniform() - 1.5f) * 2.0f; }

uint16_t to_half(float f) {
  __fp16 h = static_cast<__fp16>(f);
  uint16_t bits;
  std::memcpy(&bits, &h, 2);
  return bits;
}
double half_value(const uint8_t* p) {
  __fp16 h;
  std::memcpy(&h, p, 2);
  return static_cast<double>(static_cast<float>(h));
}
uint16_t to_bf16(float f) {  // truncation: any bfloat16 value will do
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  return static_cast<uint16_t>(bits >> 16);
}
double bf16_value(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

enum Kind { kQ4, kQ4K, kQ8, kQ6K, kQ8B };
const char* kind_name(Kind k) {
  return k == kQ4 ? "q4 (vnni)" : k == kQ4K ? "q4_k (vnni_k)" : k == kQ8 ? "q8 (vnni)" : k == kQ8B ? "q8_0 (vnni_q8b)" : "q6_k (vnni_q6k)";
}

struct Weight {
  int64_t N, K;
  std::vector<uint8_t> codes;
  std::vector<uint16_t> scales;  // 16-bit units, as the kernels take them
  int64_t block_code_bytes, block_scales;
  std::vector<double> dense;  // (N, K): the statement's weights
};

// Random packed bytes of one layout, and the weights they mean, decoded from the documented
// byte positions (never with the kernels' own helpers).
Weight make_weight(Kind kind, int64_t N, int64_t K) {
  Weight w{N, K, {}, {}, 0, 0, std::vector<double>(N * K)};
  const int64_t blocks = N / 16, groups = K / 32, supers = K / 256;
  if (kind == kQ4 || kind == kQ4K) {
    w.block_code_bytes = 16 * K / 2;
    w.codes.resize(N * K / 2);
    for (auto& b : w.codes) b = static_cast<uint8_t>(next_u32());
    if (kind == kQ4) {  // bfloat16 (K/32, 2, 16) per block: 16 s then 16 z
      w.block_scales = groups * 32;
      w.scales.resize(blocks * w.block_scales);
      for (auto& s : w.scales) s = to_bf16(normalish() * 0.01f);
    } else {  // (K/256, 320) bytes per block: sc[8][16], m[8][16], f16 d[16], dmin[16]
      w.block_scales = supers * 320 / 2;
      std::vector<uint8_t> meta(blocks * supers * 320);
      for (int64_t i = 0; i < blocks * supers; ++i) {
        uint8_t* mb = meta.data() + i * 320;
        for (int j = 0; j < 256; ++j) mb[j] = next_u32() % 64;
        for (int r = 0; r < 32; ++r) {
          const uint16_t h = to_half(uniform() * 0.002f);
          std::memcpy(mb + 256 + 2 * r, &h, 2);
        }
      }
      w.scales.resize(meta.size() / 2);
      std::memcpy(w.scales.data(), meta.data(), meta.size());
    }
    for (int64_t n = 0; n < N; ++n) {
      const int64_t b = n / 16, r = n % 16;
      for (int64_t k = 0; k < K; ++k) {
        const int64_t g = k / 32, c = (k % 32) / 8, j = k % 4;
        const bool high = (k % 8) >= 4;
        const uint8_t byte = w.codes[b * 16 * K / 2 + g * 256 + c * 64 + 4 * r + j];
        const double q = high ? byte >> 4 : byte & 15;
        double W;
        if (kind == kQ4) {
          const uint16_t* sb = w.scales.data() + b * w.block_scales + g * 32;
          W = (q - 8) * bf16_value(sb[r]) + bf16_value(sb[16 + r]);
        } else {
          const uint8_t* mb = reinterpret_cast<const uint8_t*>(w.scales.data()) + (b * supers + g / 8) * 320;
          const int64_t sub = g % 8;
          W = half_value(mb + 256 + 2 * r) * mb[16 * sub + r] * q - half_value(mb + 288 + 2 * r) * mb[128 + 16 * sub + r];
        }
        w.dense[n * K + k] = W;
      }
    }
  } else if (kind == kQ8) {  // int8 codes, [c][64] chunks of 4 k; bfloat16 scale per row
    w.block_code_bytes = 16 * K;
    w.block_scales = 16;
    w.codes.resize(N * K);
    for (auto& b : w.codes) b = static_cast<uint8_t>(static_cast<int8_t>(static_cast<int>(next_u32() % 255) - 127));
    w.scales.resize(N);
    for (auto& s : w.scales) s = to_bf16(uniform() * 0.001f);
    for (int64_t n = 0; n < N; ++n) {
      const int64_t b = n / 16, r = n % 16;
      for (int64_t k = 0; k < K; ++k) {
        const int8_t q = static_cast<int8_t>(w.codes[b * 16 * K + (k / 4) * 64 + 4 * r + k % 4]);
        w.dense[n * K + k] = q * bf16_value(w.scales[n]);
      }
    }
  } else if (kind == kQ8B) {  // int8 codes as kQ8 (-128 too); f16 d (K/32, 16) per block
    w.block_code_bytes = 16 * K;
    w.block_scales = groups * 16;
    w.codes.resize(N * K);
    for (auto& b : w.codes) b = static_cast<uint8_t>(next_u32());
    w.scales.resize(N * groups);
    for (auto& s : w.scales) s = to_half(uniform() * 0.001f);
    w.scales[5] = 0x0001;  // subnormal f16 scales
    w.scales[40] = 0x03FF;
    for (int64_t n = 0; n < N; ++n) {
      const int64_t b = n / 16, r = n % 16;
      for (int64_t k = 0; k < K; ++k) {
        const int8_t q = static_cast<int8_t>(w.codes[b * 16 * K + (k / 4) * 64 + 4 * r + k % 4]);
        const uint16_t h = w.scales[b * w.block_scales + (k / 32) * 16 + r];
        w.dense[n * K + k] = q * half_value(reinterpret_cast<const uint8_t*>(&h));
      }
    }
  } else {  // Q6_K: 384 bytes per block and group; meta (K/256, 288): int8 sc[16][16], f16 d[16]
    w.block_code_bytes = 16 * K * 3 / 4;
    w.block_scales = supers * 288 / 2;
    w.codes.resize(N * K * 3 / 4);
    for (auto& b : w.codes) b = static_cast<uint8_t>(next_u32());
    std::vector<uint8_t> meta(blocks * supers * 288);
    for (int64_t i = 0; i < blocks * supers; ++i) {
      uint8_t* mb = meta.data() + i * 288;
      for (int j = 0; j < 256; ++j) mb[j] = static_cast<uint8_t>(next_u32());
      for (int r = 0; r < 16; ++r) {
        const uint16_t h = to_half(uniform() * 0.0005f);
        std::memcpy(mb + 256 + 2 * r, &h, 2);
      }
    }
    w.scales.resize(meta.size() / 2);
    std::memcpy(w.scales.data(), meta.data(), meta.size());
    for (int64_t n = 0; n < N; ++n) {
      const int64_t b = n / 16, r = n % 16;
      for (int64_t k = 0; k < K; ++k) {
        const int64_t g = k / 32, kk = k % 32, c = kk / 8, j = kk % 4;
        const bool high = (kk % 8) >= 4;
        const uint8_t* group = w.codes.data() + b * w.block_code_bytes + g * 384;
        const uint8_t lo = group[c * 64 + 4 * r + j];
        // Top bits: chunk h = kk / 16, 2 bits at position 2 * ((kk % 16) / 4).
        const uint8_t top = (group[256 + (kk / 16) * 64 + 4 * r + j] >> (2 * ((kk % 16) / 4))) & 3;
        const int q = (high ? lo >> 4 : lo & 15) | (top << 4);
        const uint8_t* mb = meta.data() + (b * supers + g / 8) * 288;
        const int8_t sc = static_cast<int8_t>(mb[16 * (k % 256 / 16) + r]);
        w.dense[n * K + k] = half_value(mb + 256 + 2 * r) * sc * (q - 32);
      }
    }
  }
  return w;
}

template <template <int> class Block>
void run_kernel(const Weight& w, const int8_t* xq, const float* d, const int32_t* sums, int64_t sums_per_row,
                int64_t M, float* y) {
  for (int64_t b = 0; b < w.N / 16; ++b) {
    run_tiles<Block, kNeonMaxTile>(0, M, xq, d, sums, sums_per_row, w.K, w.codes.data() + b * w.block_code_bytes,
                                   w.scales.data() + b * w.block_scales, y + b * 16, w.N);
  }
}

int failures = 0;

void check(Kind kind, int64_t M, int64_t N, int64_t K) {
  const Weight w = make_weight(kind, N, K);
  const int64_t groups = K / 32;
  std::vector<float> x(M * K);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) x[m * K + k] = normalish() * (1.0f + m);
  std::vector<int8_t> xq(M * K);
  std::vector<float> d(M * groups);
  std::vector<int32_t> qsum(M * groups), qsum16(M * K / 16);
  quantize_activations(x.data(), false, M, K, xq.data(), d.data(), qsum.data());
  // The quantizer's statement: per group d = max|x| / 127, xq = round-half-even(x * 127 / max|x|).
  for (int64_t i = 0; i < M * groups; ++i) {
    float amax = 0.0f;
    for (int j = 0; j < 32; ++j) amax = std::fmax(amax, std::fabs(x[i * 32 + j]));
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    int32_t sum = 0;
    for (int j = 0; j < 32; ++j) {
      const int q = static_cast<int>(std::nearbyint(x[i * 32 + j] * inv));
      sum += q;
      if (q != xq[i * 32 + j]) {
        std::printf("FAIL quantize: group %lld element %d: %d, want %d\n", (long long)i, j, xq[i * 32 + j], q);
        ++failures;
        return;
      }
    }
    if (d[i] != amax / 127.0f || qsum[i] != sum) {
      std::printf("FAIL quantize: group %lld scale or sum\n", (long long)i);
      ++failures;
      return;
    }
  }
  std::vector<float> y(M * N);
  switch (kind) {
    case kQ4: run_kernel<Q4AffineNeon>(w, xq.data(), d.data(), qsum.data(), groups, M, y.data()); break;
    case kQ4K: run_kernel<Q4KNeon>(w, xq.data(), d.data(), qsum.data(), groups, M, y.data()); break;
    case kQ8: run_kernel<Q8BlockNeon>(w, xq.data(), d.data(), qsum.data(), groups, M, y.data()); break;
    case kQ8B: run_kernel<Q8BBlockNeon>(w, xq.data(), d.data(), qsum.data(), groups, M, y.data()); break;
    case kQ6K:
      sums_per_16(xq.data(), M * K, qsum16.data());
      run_kernel<Q6KBlockNeon>(w, xq.data(), d.data(), qsum16.data(), K / 16, M, y.data());
      break;
  }
  // y = sum_g d[m, g] sum_k xq W, in double; the kernel may differ by its float32 roundings:
  // a few per group term, one per group in the sum over groups.
  double worst = 0.0;
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) {
      double want = 0.0, terms = 0.0;
      for (int64_t g = 0; g < groups; ++g) {
        double dot = 0.0, mag = 0.0;
        for (int64_t k = g * 32; k < g * 32 + 32; ++k) {
          dot += xq[m * K + k] * w.dense[n * K + k];
          mag += std::fabs(xq[m * K + k] * w.dense[n * K + k]);
        }
        want += d[m * groups + g] * dot;
        terms += d[m * groups + g] * mag;
      }
      // Q4 layouts: the offset term's magnitude counts too (|z - 8s| d sum|xq| <= terms-sized).
      const double bound = (8 + groups) * std::ldexp(1.0, -24) * terms * (kind == kQ4 || kind == kQ4K ? 4 : 1);
      const double err = std::fabs(static_cast<double>(y[m * N + n]) - want);
      if (!(err <= bound)) {
        if (failures < 20) std::printf("FAIL %s m=%lld row=%lld: got %.9g want %.9g (bound %.3g)\n", kind_name(kind),
                                       (long long)m, (long long)n, y[m * N + n], want, bound);
        ++failures;
      }
      if (bound > 0) worst = std::fmax(worst, err / bound);
    }
  }
  std::printf("%-16s M=%-3lld N=%lld K=%lld  max err/bound %.3g\n", kind_name(kind), (long long)M, (long long)N,
              (long long)K, worst);
}

}  // namespace

int main() {
  for (Kind kind : {kQ4, kQ4K, kQ8, kQ6K, kQ8B})
    for (int64_t M : {1, 2, 3, 8, 13}) check(kind, M, 80, 768);
  std::printf("failures: %d\n", failures);
  return failures > 0 ? 1 : 0;
}
