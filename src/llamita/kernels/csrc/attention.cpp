// Decode attention over the paged KV cache (model/paged_kv_cache.py): one query per batch row,
// its keys and values read in place from the layer's block pools, at every level (plain C++
// that the level's flags vectorize; no intrinsics).
//
// Why our own kernel: the step it replaces gathers each row's blocks into a contiguous copy,
// widens it to float32 and runs two batched matmuls of 3 x 64 by 64 x L per KV head. At 8 rows
// that is 24 tiny GEMMs a matmul, 60 calls a step, whose fixed costs and copies grow with the
// rows while the arithmetic (~1 M multiply-adds a layer) is negligible.
//
// Numerics (the same statement as model/transformer.py's single_query_attention): per row b
// and head h, with G = n_heads / n_kv_heads query heads per KV head (kv = h / G),
//   s_l = (q[b, h] * hd^-1/2) . k[b, kv, l]   for the positions l = 0..positions[b]
//   out[b, h] = sum_l softmax(s)_l v[b, kv, l]
// in float32 (keys and values widened from bfloat16 or float16 exactly). Position l of row b lives in
// block tables[b, l / block_size] at slot l % block_size. The result is float32 (B, H, hd).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__F16C__)
#include <immintrin.h>
#elif defined(__aarch64__)
#include <arm_neon.h>
#endif

namespace {

// One GCC vector of floats as wide as the level's registers (one zmm with AVX-512, one ymm with
// AVX2, two NEON q registers), without intrinsics. Wider than the registers, GCC lowered the
// conversions and compares of exp to scalar code: 16 lanes on AVX2 ran 6.5x slower than on
// AVX-512 (8 rows of the default model at 512 positions: 1.49 against 0.23 ms).
#ifdef __AVX512F__
#define LLAMITA_VECTOR_BYTES 64
#else
#define LLAMITA_VECTOR_BYTES 32
#endif
typedef float fvec __attribute__((vector_size(LLAMITA_VECTOR_BYTES)));
typedef uint32_t uvec __attribute__((vector_size(LLAMITA_VECTOR_BYTES)));
typedef uint16_t hvec __attribute__((vector_size(LLAMITA_VECTOR_BYTES / 2)));
typedef int32_t ivec __attribute__((vector_size(LLAMITA_VECTOR_BYTES)));
constexpr int kLanes = LLAMITA_VECTOR_BYTES / 4;

inline fvec load(const float* p) {
  fvec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline fvec load(const uint16_t* p) {  // bfloat16 -> float32, exact
  hvec h;
  std::memcpy(&h, p, sizeof h);
  const uvec w = __builtin_convertvector(h, uvec) << 16;
  fvec v;
  std::memcpy(&v, &w, sizeof v);
  return v;
}
inline float widen(float v) { return v; }
inline float widen(uint16_t bf16) {
  const uint32_t bits = static_cast<uint32_t>(bf16) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// float16 pools (the cache of float32 models, PagedKVCache): 16 bits as IEEE halves. A type of
// their own, so the bfloat16 overloads above never take them.
struct Half {
  uint16_t bits;
};
inline fvec load(const Half* p) {  // float16 -> float32, exact
#if defined(__AVX512F__)
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
#elif defined(__F16C__)
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
#elif defined(__aarch64__)
  const float16x8_t h = vreinterpretq_f16_u16(vld1q_u16(&p->bits));
  const float32x4_t halves[2] = {vcvt_f32_f16(vget_low_f16(h)), vcvt_high_f32_f16(h)};
  fvec v;
  std::memcpy(&v, halves, sizeof v);
  return v;
#else
  fvec v;
  for (int i = 0; i < kLanes; ++i) v[i] = c10::detail::fp16_ieee_to_fp32_value(p[i].bits);
  return v;
#endif
}
inline float widen(Half h) { return c10::detail::fp16_ieee_to_fp32_value(h.bits); }
typedef float f32x8 __attribute__((vector_size(32)));
typedef float f32x4 __attribute__((vector_size(16)));
inline float sum_lanes(fvec v) {  // the lanes summed as a tree of halves (a fixed order)
#if LLAMITA_VECTOR_BYTES == 64
  f32x8 lo, hi;
  std::memcpy(&lo, &v, sizeof lo);
  std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof lo, sizeof hi);
  const f32x8 s8 = lo + hi;
#else
  const f32x8 s8 = v;
#endif
  f32x4 a, b;
  std::memcpy(&a, &s8, sizeof a);
  std::memcpy(&b, reinterpret_cast<const char*>(&s8) + sizeof a, sizeof b);
  const f32x4 s4 = a + b;
  return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

// The lane sums of 4 vectors, (sum a, sum b, sum c, sum d), folded together: halves of pairs,
// then quarters, then the rest; ~3 operations a vector where one vector alone takes ~8 (a
// decode step's scores spent more on these sums than on their multiply-adds).
inline f32x4 sum_lanes4(fvec a, fvec b, fvec c, fvec d) {
#if LLAMITA_VECTOR_BYTES == 64
  const fvec ab = __builtin_shufflevector(a, b, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
                  __builtin_shufflevector(a, b, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  const fvec cd = __builtin_shufflevector(c, d, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
                  __builtin_shufflevector(c, d, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  const fvec q = __builtin_shufflevector(ab, cd, 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
                 __builtin_shufflevector(ab, cd, 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
  // q: 4 partial sums of a, then of b, c, d
  const fvec t = __builtin_shufflevector(q, q, 0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  const f32x8 u = __builtin_shufflevector(t, t, 0, 1, 2, 3, 4, 5, 6, 7) +
                  __builtin_shufflevector(t, t, 8, 9, 10, 11, 12, 13, 14, 15);
  return __builtin_shufflevector(u, u, 0, 1, 2, 3) + __builtin_shufflevector(u, u, 4, 5, 6, 7);
#else
  const fvec ab = __builtin_shufflevector(a, b, 0, 1, 2, 3, 8, 9, 10, 11) +
                  __builtin_shufflevector(a, b, 4, 5, 6, 7, 12, 13, 14, 15);
  const fvec cd = __builtin_shufflevector(c, d, 0, 1, 2, 3, 8, 9, 10, 11) +
                  __builtin_shufflevector(c, d, 4, 5, 6, 7, 12, 13, 14, 15);
  const fvec q = __builtin_shufflevector(ab, cd, 0, 1, 4, 5, 8, 9, 12, 13) +
                 __builtin_shufflevector(ab, cd, 2, 3, 6, 7, 10, 11, 14, 15);
  // q: 2 partial sums of a, then of b, c, d
  return __builtin_shufflevector(q, q, 0, 2, 4, 6) + __builtin_shufflevector(q, q, 1, 3, 5, 7);
#endif
}

// exp(x) for x <= 0 in every lane (softmax's exp(s - max)): x = n ln2 + r, |r| <= ln2 / 2, a
// degree-6 Taylor polynomial of exp(r) (relative error < 2e-7 over that range), times 2^n
// through the exponent bits. x below -87 gives exp(-87) ~ 1.6e-38 instead of a smaller number
// or 0: weights that small leave a float32 softmax unchanged.
inline fvec exp_lanes(fvec x) {
  const fvec zero = {};
  x = x < -87.0f ? zero - 87.0f : x;  // lane-wise: clamp
  // n = round(x / ln2) (x <= 0: truncating -x / ln2 + 1/2 toward zero rounds it)
  const ivec ni = -__builtin_convertvector(-x * 1.44269504f + 0.5f, ivec);
  const fvec n = __builtin_convertvector(ni, fvec);
  const fvec r = (x - n * 0.693359375f) + n * 2.12194440e-4f;  // ln2 in two parts: n ln2 exact
  fvec p = zero + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const ivec e = (ni + 127) << 23;
  fvec scale;
  std::memcpy(&scale, &e, sizeof scale);
  return p * scale;
}

// The largest of `length` scores: lane-wise over whole vectors, then the lanes and the tail
// (std::max_element was one serial chain of compares, ~4 cycles a score).
inline float max_score(const float* s, int64_t length) {
  float top = -std::numeric_limits<float>::infinity();
  int64_t l = 0;
  if (length >= kLanes) {
    fvec m = load(s);
    for (l = kLanes; l + kLanes <= length; l += kLanes) {
      const fvec v = load(s + l);
      m = v > m ? v : m;
    }
    for (int j = 0; j < kLanes; ++j) top = std::max(top, m[j]);
  }
  for (; l < length; ++l) top = std::max(top, s[l]);
  return top;
}

// softmax of `length` scores in place, float32: exp(s - max) / sum.
inline void softmax(float* s, int64_t length) {
  const float top = max_score(s, length);
  float total = 0.0f;
  int64_t l = 0;
  for (; l + kLanes <= length; l += kLanes) {
    const fvec e = exp_lanes(load(s + l) - top);
    std::memcpy(s + l, &e, sizeof e);
    total += sum_lanes(e);
  }
  if (l < length) {  // the tail through a padded vector
    fvec v = fvec{} - 100.0f;
    std::memcpy(&v, s + l, (length - l) * sizeof(float));
    const fvec e = exp_lanes(v - top);
    for (int64_t j = 0; l + j < length; ++j) {
      s[l + j] = e[j];
      total += e[j];
    }
  }
  const float inv = 1.0f / total;
  for (l = 0; l < length; ++l) s[l] *= inv;
}

// Asks for a key or value row (hd values) ahead of its use. A decode step's keys and values
// (8 rows at ~100 positions: ~40 MB over 30 layers) come from memory, in rows scattered by the
// block tables: without this, 2 threads spent as long waiting for them as computing.
template <class T>
inline void prefetch_row(const T* row, int64_t hd) {
  const char* p = reinterpret_cast<const char*>(row);
  for (int64_t i = 0; i < hd * static_cast<int64_t>(sizeof(T)); i += 64) __builtin_prefetch(p + i, 0, 3);
}

// A long row's value sums are taken kChunk positions at a time and the chunks' sums added in
// order, in the one-pass path and in the phased one (attend_phased) alike, so a row's result
// depends on its length only, never on the batch or the threads. A multiple of 4, so a chunk's
// keys are scored in the same runs of 4 as the whole row's.
constexpr int64_t kChunk = 512;

// Up to 4 query heads qs (GB, hd, pre-scaled) of one row and KV head against the keys of
// positions l0..l1-1 at element offsets at[l] of the pools: scores[g * ld + l]. C = hd / kLanes
// vectors a head, even. Each key row is loaded once for the GB heads that share it (loaded once
// per head, the rows of a long context came from L2 GB times); 4 keys at a time, GB x 4
// accumulators, their lane sums folded together.
template <int C, int GB, class T>
void score_heads(const float* qs, int64_t hd, int64_t l0, int64_t l1, const int64_t* at, const T* kp, const T* vp,
                 float* scores, int64_t ld) {
  static_assert(C % 2 == 0 && GB >= 1 && GB <= 4, "pairs of vectors, 1-4 heads");
  int64_t l = l0;
  for (; l + 4 <= l1; l += 4) {
    for (int64_t j = l + 8; j < std::min(l + 12, l1); ++j) prefetch_row(kp + at[j], hd);
    for (int64_t j = l; j < l + 4; ++j) prefetch_row(vp + at[j], hd);  // for the values' passes
    const T* key[4] = {kp + at[l], kp + at[l + 1], kp + at[l + 2], kp + at[l + 3]};
    fvec acc[GB][4] = {};
    for (int c = 0; c < C; ++c)
      for (int j = 0; j < 4; ++j) {
        const fvec k = load(key[j] + c * kLanes);
        for (int g = 0; g < GB; ++g) acc[g][j] += load(qs + g * hd + c * kLanes) * k;
      }
    for (int g = 0; g < GB; ++g) {
      const f32x4 sums = sum_lanes4(acc[g][0], acc[g][1], acc[g][2], acc[g][3]);
      std::memcpy(scores + g * ld + l, &sums, sizeof sums);
    }
  }
  for (; l < l1; ++l) {
    const T* key = kp + at[l];
    fvec acc[GB][2] = {};
    for (int c = 0; c < C; c += 2) {
      const fvec k0 = load(key + c * kLanes), k1 = load(key + (c + 1) * kLanes);
      for (int g = 0; g < GB; ++g) {
        acc[g][0] += load(qs + g * hd + c * kLanes) * k0;
        acc[g][1] += load(qs + g * hd + (c + 1) * kLanes) * k1;
      }
    }
    for (int g = 0; g < GB; ++g) scores[g * ld + l] = sum_lanes(acc[g][0] + acc[g][1]);
  }
}

// out (GB, hd) = sum over l = l0..l1-1 of the weights scores[g * ld + l] times the value rows,
// 2 vectors a pass, so the GB x 2 accumulators stay in registers.
template <int C, int GB, class T>
void value_heads(int64_t hd, int64_t l0, int64_t l1, const int64_t* at, const T* vp, const float* scores, int64_t ld,
                 float* out) {
  for (int c = 0; c < C; c += 2) {
    fvec acc[GB][2] = {};
    for (int64_t l = l0; l < l1; ++l) {
      const T* value = vp + at[l];
      const fvec v0 = load(value + c * kLanes), v1 = load(value + (c + 1) * kLanes);
      for (int g = 0; g < GB; ++g) {
        const float p = scores[g * ld + l];
        acc[g][0] += p * v0;
        acc[g][1] += p * v1;
      }
    }
    for (int g = 0; g < GB; ++g) std::memcpy(out + g * hd + c * kLanes, acc[g], sizeof acc[g]);
  }
}

// The values of positions 0..length-1 a chunk at a time (kChunk), into out (GB, hd); partial:
// GB * hd floats of scratch.
template <int C, int GB, class T>
void value_chunks(int64_t hd, int64_t length, const int64_t* at, const T* vp, const float* scores, float* out,
                  float* partial) {
  value_heads<C, GB, T>(hd, 0, std::min(length, kChunk), at, vp, scores, length, out);
  for (int64_t l0 = kChunk; l0 < length; l0 += kChunk) {
    value_heads<C, GB, T>(hd, l0, std::min(length, l0 + kChunk), at, vp, scores, length, partial);
    for (int64_t i = 0; i < GB * hd; ++i) out[i] += partial[i];
  }
}

// Up to 4 query heads of one row and KV head over positions 0..length-1 in one pass: scores,
// softmax, values; out (GB, hd).
template <int C, int GB, class T>
void attend_heads(const float* qs, int64_t hd, int64_t length, const int64_t* at, const T* kp, const T* vp,
                  float* scores, float* out, float* partial) {
  score_heads<C, GB, T>(qs, hd, 0, length, at, kp, vp, scores, length);
  for (int g = 0; g < GB; ++g) softmax(scores + g * length, length);
  value_chunks<C, GB, T>(hd, length, at, vp, scores, out, partial);
}

// Any head_dim (not whole pairs of vectors): one query head at a time, scalar tails.
template <class T>
void attend_any(const float* qs, int64_t G, int64_t hd, int64_t length, const int64_t* at, const T* kp,
                const T* vp, float* scores, float* out) {
  const int64_t full = hd / kLanes * kLanes;
  for (int64_t g = 0; g < G; ++g) {
    const float* q = qs + g * hd;
    float* sg = scores + g * length;
    for (int64_t l = 0; l < length; ++l) {
      const T* key = kp + at[l];
      fvec acc = {};
      for (int64_t d = 0; d < full; d += kLanes) acc += load(q + d) * load(key + d);
      float s = sum_lanes(acc);
      for (int64_t d = full; d < hd; ++d) s += q[d] * widen(key[d]);
      sg[l] = s;
    }
    softmax(sg, length);
    float* o = out + g * hd;
    std::fill(o, o + hd, 0.0f);
    for (int64_t l = 0; l < length; ++l) {
      const T* value = vp + at[l];
      for (int64_t d = 0; d < hd; ++d) o[d] += sg[l] * widen(value[d]);
    }
  }
}

// Runs of up to 4 of a KV head's G query heads: f(GB, g), GB the run's length as a template
// argument.
template <class F>
void head_runs(int64_t G, F&& f) {
  for (int64_t g = 0; g < G; g += 4) {
    switch (std::min<int64_t>(4, G - g)) {
      case 1: f(std::integral_constant<int, 1>(), g); break;
      case 2: f(std::integral_constant<int, 2>(), g); break;
      case 3: f(std::integral_constant<int, 3>(), g); break;
      default: f(std::integral_constant<int, 4>(), g); break;
    }
  }
}

// The G query heads of one row and KV head, in runs of up to 4 heads (attend_heads).
template <int C, class T>
void attend_group(const float* qs, int64_t G, int64_t hd, int64_t length, const int64_t* at, const T* kp,
                  const T* vp, float* scores, float* out) {
  float partial[4 * 128];  // hd <= 128 here (C = hd / kLanes)
  head_runs(G, [&](auto gb, int64_t g) {
    attend_heads<C, decltype(gb)::value, T>(qs + g * hd, hd, length, at, kp, vp, scores + g * length, out + g * hd,
                                            partial);
  });
}

// Slot offsets (elements) of row b's positions l0..l1-1 into at[l0..l1-1].
inline void slot_offsets(const int64_t* tables, int64_t width, int64_t b, int64_t l0, int64_t l1, int64_t bs,
                         int64_t block_stride, int64_t slot_stride, int64_t* at) {
  for (int64_t l = l0; l < l1; ++l) at[l] = tables[b * width + l / bs] * block_stride + (l % bs) * slot_stride;
}

// Few rows of long contexts: (row, KV head) pairs alone would leave threads idle (the default
// model's 3 KV heads on 2 threads; an 8B's 8 on 16), so the work is split by chunks of kChunk
// positions too, in phases: the chunks' scores, each head's softmax over its whole row, the
// chunks' value sums, then those added in order: the bits of the one-pass path.
template <int C, class T>
void attend_phased(const float* qp, int64_t B, int64_t H, int64_t n_kv, int64_t hd, const int64_t* tables,
                   int64_t width, const int64_t* positions, float scale, int64_t bs, const T* kp, const T* vp,
                   float* op) {
  const int64_t G = H / n_kv, slot_stride = n_kv * hd, block_stride = bs * slot_stride;
  std::vector<int64_t> row_at(B + 1, 0), item_at(B + 1, 0);  // each row's first score, first item
  for (int64_t b = 0; b < B; ++b) {
    const int64_t length = positions[b] + 1;
    row_at[b + 1] = row_at[b] + H * length;
    item_at[b + 1] = item_at[b] + n_kv * ((length + kChunk - 1) / kChunk);
  }
  const int64_t items = item_at[B];
  std::vector<float> scores(row_at[B]), partials(items * G * hd);
  auto item = [&](int64_t i, int64_t& b, int64_t& kv, int64_t& l0, int64_t& l1) {
    b = std::upper_bound(item_at.begin(), item_at.end(), i) - item_at.begin() - 1;
    const int64_t length = positions[b] + 1, chunks = (length + kChunk - 1) / kChunk, k = i - item_at[b];
    kv = k / chunks;
    l0 = (k % chunks) * kChunk;
    l1 = std::min(length, l0 + kChunk);
  };
  at::parallel_for(0, items, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> qs(G * hd);
    std::vector<int64_t> at;
    for (int64_t i = i0; i < i1; ++i) {
      int64_t b, kv, l0, l1;
      item(i, b, kv, l0, l1);
      const int64_t length = positions[b] + 1;
      const float* qb = qp + (b * H + kv * G) * hd;
      for (int64_t j = 0; j < G * hd; ++j) qs[j] = qb[j] * scale;
      at.resize(length);
      slot_offsets(tables, width, b, l0, l1, bs, block_stride, slot_stride, at.data());
      float* s = scores.data() + row_at[b] + kv * G * length;
      head_runs(G, [&](auto gb, int64_t g) {
        score_heads<C, decltype(gb)::value, T>(qs.data() + g * hd, hd, l0, l1, at.data(), kp + kv * hd, vp + kv * hd,
                                               s + g * length, length);
      });
    }
  });
  at::parallel_for(0, B * H, 1, [&](int64_t h0, int64_t h1) {
    for (int64_t h = h0; h < h1; ++h) {
      const int64_t b = h / H, length = positions[b] + 1;
      softmax(scores.data() + row_at[b] + (h % H) * length, length);
    }
  });
  at::parallel_for(0, items, 1, [&](int64_t i0, int64_t i1) {
    std::vector<int64_t> at;
    for (int64_t i = i0; i < i1; ++i) {
      int64_t b, kv, l0, l1;
      item(i, b, kv, l0, l1);
      const int64_t length = positions[b] + 1;
      at.resize(length);
      slot_offsets(tables, width, b, l0, l1, bs, block_stride, slot_stride, at.data());
      const float* s = scores.data() + row_at[b] + kv * G * length;
      head_runs(G, [&](auto gb, int64_t g) {
        value_heads<C, decltype(gb)::value, T>(hd, l0, l1, at.data(), vp + kv * hd, s + g * length, length,
                                               partials.data() + i * G * hd + g * hd);
      });
    }
  });
  at::parallel_for(0, B * n_kv, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / n_kv, kv = t % n_kv, length = positions[b] + 1, chunks = (length + kChunk - 1) / kChunk;
      const float* first = partials.data() + (item_at[b] + kv * chunks) * G * hd;
      float* o = op + (b * H + kv * G) * hd;
      // Per run of heads, as value_chunks adds them: the same sums in the same order.
      std::copy(first, first + G * hd, o);
      for (int64_t c = 1; c < chunks; ++c)
        for (int64_t j = 0; j < G * hd; ++j) o[j] += first[c * G * hd + j];
    }
  });
}

template <class T>
void attend(const at::Tensor& q, const at::Tensor& k_pool, const at::Tensor& v_pool, const int64_t* tables,
            int64_t width, const int64_t* positions, float scale, at::Tensor& out) {
  const int64_t B = q.size(0), H = q.size(1), hd = q.size(2);
  const int64_t bs = k_pool.size(1), n_kv = k_pool.size(2), G = H / n_kv;
  const int64_t slot_stride = n_kv * hd, block_stride = bs * slot_stride;
  const float* qp = q.data_ptr<float>();
  const T* kp = reinterpret_cast<const T*>(k_pool.data_ptr());
  const T* vp = reinterpret_cast<const T*>(v_pool.data_ptr());
  float* op = out.data_ptr<float>();
  // The phases cost three more parallel regions and a pass over the scores: measured on 2
  // threads (one row, 3 KV heads, float16, 30 layers), 30% slower at 600 positions, even at
  // 2,048, 7-12% faster at 8,192; so only rows past 4 chunks, and only where (row, KV head)
  // pairs are fewer than twice the threads.
  const int64_t longest = *std::max_element(positions, positions + B) + 1;
  if ((hd == 64 || hd == 128) && longest > 4 * kChunk && B * n_kv < 2 * at::get_num_threads()) {
    auto phased = hd == 64 ? attend_phased<64 / kLanes, T> : attend_phased<128 / kLanes, T>;
    phased(qp, B, H, n_kv, hd, tables, width, positions, scale, bs, kp, vp, op);
    return;
  }
  at::parallel_for(0, B * n_kv, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> qs(G * hd), scores;
    std::vector<int64_t> at;  // each position's slot in the pools, in elements (no division a key)
    int64_t at_row = -1;      // the row `at` was made for: its KV heads share it
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / n_kv, kv = t % n_kv, length = positions[b] + 1;
      const float* qb = qp + (b * H + kv * G) * hd;  // the group's G heads are consecutive
      for (int64_t i = 0; i < G * hd; ++i) qs[i] = qb[i] * scale;
      scores.resize(G * length);
      if (b != at_row) {
        at.resize(length);
        for (int64_t start = 0, i = 0; start < length; start += bs, ++i)
          for (int64_t j = 0; j < bs && start + j < length; ++j)
            at[start + j] = tables[b * width + i] * block_stride + j * slot_stride;
        at_row = b;
      }
      auto run = hd == 64 ? attend_group<64 / kLanes, T> : hd == 128 ? attend_group<128 / kLanes, T> : attend_any<T>;
      run(qs.data(), G, hd, length, at.data(), kp + kv * hd, vp + kv * hd, scores.data(), op + (b * H + kv * G) * hd);
    }
  });
}

// q (B, H, hd) float32; k_pool, v_pool (n_blocks, block_size, n_kv, hd) float32, bfloat16 or
// float16;
// tables (B, W) int64; positions (B,) int64, row b attending positions 0..positions[b].
at::Tensor paged_decode_attention(const at::Tensor& q, const at::Tensor& k_pool, const at::Tensor& v_pool,
                                  const at::Tensor& tables, const at::Tensor& positions, double scale) {
  const char* op = "paged_decode_attention";
  TORCH_CHECK(q.device().is_cpu() && k_pool.device().is_cpu() && v_pool.device().is_cpu(), op, " runs on the CPU");
  TORCH_CHECK(q.dim() == 3 && q.scalar_type() == at::kFloat, op, ": q must be (B, H, hd) float32");
  TORCH_CHECK(k_pool.dim() == 4 && k_pool.sizes() == v_pool.sizes() && k_pool.scalar_type() == v_pool.scalar_type() &&
                  k_pool.is_contiguous() && v_pool.is_contiguous(),
              op, ": the pools must be contiguous (n_blocks, block_size, n_kv_heads, head_dim), alike");
  const at::ScalarType pool_type = k_pool.scalar_type();
  TORCH_CHECK(pool_type == at::kFloat || pool_type == at::kBFloat16 || pool_type == at::kHalf, op,
              ": the pools must be float32, bfloat16 or float16");
  const int64_t B = q.size(0), H = q.size(1), hd = q.size(2);
  const int64_t n_blocks = k_pool.size(0), bs = k_pool.size(1), n_kv = k_pool.size(2);
  TORCH_CHECK(k_pool.size(3) == hd && n_kv > 0 && H % n_kv == 0, op, ": q ", q.sizes(), " does not fit pools ",
              k_pool.sizes(), " (the same head_dim; query heads in whole groups per KV head)");
  TORCH_CHECK(tables.dim() == 2 && tables.size(0) == B && tables.scalar_type() == at::kLong, op,
              ": tables must be (B, W) int64");
  TORCH_CHECK(positions.numel() == B && positions.scalar_type() == at::kLong, op, ": positions must be (B,) int64");
  const at::Tensor qc = q.contiguous(), tc = tables.contiguous(), pc = positions.contiguous();
  const int64_t width = tc.size(1);
  const int64_t* tp = tc.data_ptr<int64_t>();
  const int64_t* pp = pc.data_ptr<int64_t>();
  // Every block a row reads must be in the pool: a bad table is an error, never a stray read.
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(pp[b] >= 0 && pp[b] < width * bs, op, ": row ", b, "'s position ", pp[b], " is outside its ",
                width, " blocks of ", bs);
    for (int64_t i = 0; i <= pp[b] / bs; ++i)
      TORCH_CHECK(tp[b * width + i] >= 0 && tp[b * width + i] < n_blocks, op, ": row ", b, " names block ",
                  tp[b * width + i], " of a pool of ", n_blocks);
  }
  at::Tensor out = at::empty({B, H, hd}, q.options());
  if (pool_type == at::kBFloat16) {
    attend<uint16_t>(qc, k_pool, v_pool, tp, width, pp, static_cast<float>(scale), out);
  } else if (pool_type == at::kHalf) {
    attend<Half>(qc, k_pool, v_pool, tp, width, pp, static_cast<float>(scale), out);
  } else {
    attend<float>(qc, k_pool, v_pool, tp, width, pp, static_cast<float>(scale), out);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(LLAMITA_OPS, m) {
  m.def("paged_decode_attention(Tensor q, Tensor k_pool, Tensor v_pool, Tensor tables, Tensor positions, "
        "float scale) -> Tensor");
}
TORCH_LIBRARY_IMPL(LLAMITA_OPS, CPU, m) { m.impl("paged_decode_attention", paged_decode_attention); }
