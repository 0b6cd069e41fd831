// The sampler's chain for many rows in one call (engine/sampler.py, `sample_rows`): top_k,
// then top_p and min_p at temperature 1, then the draw at the row's temperature, as llama.cpp
// orders them. Plain C++ that every level's flags vectorize, like attention.cpp.
//
// Why our own operator: at the default parameters (top_k 40, top_p 0.95, min_p 0.05,
// temperature 0.8) the torch chain took ~100 us a row on the default model's 49,152 logits
// (half in torch.topk, the rest in a dozen small operators on 40 values), a tenth of an 8-row
// decode step on AVX2. Here the k best are found in two passes over the row (`top_k` below:
// block maxima, then only the blocks that can hold one of the k) and kept in a heap.
//
// Numerics, per row b (the statement tests/kernels/test_sampling.py checks in float64):
//   candidates: the k = min(top_k[b], V) largest logits, ties to the lower id, best first
//   top_p < 1:  keep candidate i while the probability mass (softmax over the candidates, at
//               temperature 1) of the candidates before it is < top_p (the first always stays)
//   min_p > 0:  drop the candidates whose logit is < the best's + log(min_p)
//   draw:       the survivors in the order of their ids, weights exp((l - best) / T); the first
//               one whose running sum of weights passes uniform[b] * their total
// in double. A row whose best logit is not finite (NaN anywhere, or no finite logit) gets -1.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <vector>

namespace {

#ifdef __AVX512F__
constexpr int kLanes = 16;
#else
constexpr int kLanes = 8;  // one ymm on AVX2, two NEON q registers
#endif
typedef float fvec __attribute__((vector_size(kLanes * 4)));
typedef int32_t ivec __attribute__((vector_size(kLanes * 4)));

struct Candidate {
  float logit;
  int64_t id;
};

// Heap order with the worst candidate on top: a lower logit, or the same logit and a higher id.
inline bool better(const Candidate& a, const Candidate& b) {
  return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
}

// One vector at a time: a memcpy of the block's 4 into an array went through the stack in
// 16-byte halves on AVX2 (GCC splits unaligned 32-byte loads), 3.5x the time of the row.
inline fvec load(const float* p) {
  fvec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

typedef float f32x4 __attribute__((vector_size(16)));
typedef int32_t i32x4 __attribute__((vector_size(16)));

inline f32x4 max4(f32x4 a, f32x4 b) { return a > b ? a : b; }

// The largest lane, by halves (a NaN lane may or may not come through; NaN rows fail anyway).
inline float max_lanes(fvec v) {
  f32x4 m;
  std::memcpy(&m, &v, sizeof m);
  for (int at = 4; at < kLanes; at += 4) {
    f32x4 part;
    std::memcpy(&part, reinterpret_cast<const char*>(&v) + 4 * at, sizeof part);
    m = max4(m, part);
  }
  m = max4(m, __builtin_shuffle(m, i32x4{2, 3, 0, 1}));
  m = max4(m, __builtin_shuffle(m, i32x4{1, 0, 3, 2}));
  return m[0];
}

// The k best of one row of n logits, best first; false if a logit is NaN.
//
// Two passes, so that few logits ever meet the heap whatever their order: the first takes the
// largest logit of each block of 4 vectors; the k-th largest of those, t, is a lower bound of
// the k-th largest logit (k blocks each hold a logit >= t), so the second pass offers only the
// blocks whose largest is >= t: about k blocks, where one pass in order would offer every
// block of logits that rise along the row.
bool top_k(const float* row, int64_t n, int64_t k, std::vector<Candidate>& heap, std::vector<float>& maxima,
           std::vector<float>& scratch) {
  heap.clear();
  const auto worse_on_top = [](const Candidate& a, const Candidate& b) { return better(a, b); };
  auto offer = [&](int64_t i) {
    const Candidate c{row[i], i};
    if (static_cast<int64_t>(heap.size()) < k) {
      heap.push_back(c);
      std::push_heap(heap.begin(), heap.end(), worse_on_top);
    } else if (better(c, heap.front())) {  // never for NaN
      std::pop_heap(heap.begin(), heap.end(), worse_on_top);
      heap.back() = c;
      std::push_heap(heap.begin(), heap.end(), worse_on_top);
    }
  };
  constexpr int64_t kBlock = 4 * kLanes;
  const int64_t blocks = n / kBlock;
  maxima.resize(blocks);
  ivec nan = {};
  for (int64_t b = 0; b < blocks; ++b) {
    fvec top = load(row + b * kBlock);
    for (int j = 0; j < 4; ++j) {
      const fvec v = load(row + b * kBlock + j * kLanes);
      nan |= v != v;
      top = v > top ? v : top;
    }
    maxima[b] = max_lanes(top);
  }
  for (int j = 0; j < kLanes; ++j)
    if (nan[j]) return false;
  for (int64_t i = blocks * kBlock; i < n; ++i)
    if (row[i] != row[i]) return false;
  float bound = -std::numeric_limits<float>::infinity();
  if (k <= blocks) {
    scratch.assign(maxima.begin(), maxima.end());
    std::nth_element(scratch.begin(), scratch.begin() + (k - 1), scratch.end(), std::greater<float>());
    bound = scratch[k - 1];
  }
  for (int64_t b = 0; b < blocks; ++b)
    if (maxima[b] >= bound)
      for (int64_t i = b * kBlock; i < (b + 1) * kBlock; ++i) offer(i);
  for (int64_t i = blocks * kBlock; i < n; ++i) offer(i);
  std::sort_heap(heap.begin(), heap.end(), worse_on_top);  // best first
  return true;
}

int64_t sample_row(const float* row, int64_t n, int64_t k, double top_p, double min_p, double temperature,
                   double uniform, std::vector<Candidate>& kept, std::vector<float>& maxima,
                   std::vector<float>& scratch) {
  if (!top_k(row, n, std::min(k, n), kept, maxima, scratch) || kept.empty() || !std::isfinite(kept.front().logit)) return -1;
  const double best = kept.front().logit;
  size_t survivors = kept.size();
  if (top_p < 1.0) {
    double total = 0.0;
    for (const Candidate& c : kept) total += std::exp(c.logit - best);
    double before = 0.0;
    for (size_t i = 0; i < kept.size(); ++i) {
      if (i > 0 && before >= top_p) {
        survivors = i;
        break;
      }
      before += std::exp(kept[i].logit - best) / total;
    }
  }
  if (min_p > 0.0) {
    const double threshold = best + std::log(min_p);
    size_t i = 1;
    while (i < survivors && kept[i].logit >= threshold) ++i;
    survivors = i;  // the candidates are best first, so the kept ones are a prefix
  }
  kept.resize(survivors);
  std::sort(kept.begin(), kept.end(), [](const Candidate& a, const Candidate& b) { return a.id < b.id; });
  std::vector<double> weight(survivors);
  double total = 0.0;
  for (size_t i = 0; i < survivors; ++i) total += weight[i] = std::exp((kept[i].logit - best) / temperature);
  const double target = uniform * total;
  double running = 0.0;
  for (size_t i = 0; i < survivors; ++i) {
    running += weight[i];
    if (running > target) return kept[i].id;
  }
  return kept.back().id;  // uniform * total rounded up to the total
}

// logits (B, V) float32 with unit column stride (a row stride, e.g. a view of the first V of a
// padded vocabulary, is fine); rows (B, 5) float64, one row's top_k (>= 1), top_p, min_p,
// temperature (> 0) and uniform (in [0, 1)) each. Returns the token ids (B,) int64.
at::Tensor sample_top_k(const at::Tensor& logits, const at::Tensor& rows) {
  TORCH_CHECK(logits.dim() == 2 && logits.scalar_type() == at::kFloat && logits.stride(1) == 1,
              "sample_top_k: logits must be (B, V) float32 with unit column stride");
  const int64_t B = logits.size(0), V = logits.size(1), ld = logits.stride(0);
  TORCH_CHECK(rows.dim() == 2 && rows.size(0) == B && rows.size(1) == 5 && rows.is_contiguous() &&
                  rows.scalar_type() == at::kDouble,
              "sample_top_k: rows must be (B, 5) float64: top_k, top_p, min_p, temperature, uniform");
  const double* rp = rows.data_ptr<double>();
  for (int64_t b = 0; b < B; ++b)
    TORCH_CHECK(rp[5 * b] >= 1.0 && rp[5 * b + 3] > 0.0, "sample_top_k: needs top_k >= 1 and temperature > 0");
  at::Tensor out = at::empty({B}, at::TensorOptions().dtype(at::kLong));
  const float* lp = logits.data_ptr<float>();
  int64_t* op = out.data_ptr<int64_t>();
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<Candidate> kept;
    std::vector<float> maxima, scratch;
    for (int64_t b = b0; b < b1; ++b) {
      const double* r = rp + 5 * b;
      op[b] = sample_row(lp + b * ld, V, static_cast<int64_t>(r[0]), r[1], r[2], r[3], r[4], kept, maxima, scratch);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(LLAMITA_OPS, m) {
  m.def("sample_top_k(Tensor logits, Tensor rows) -> Tensor");
}
TORCH_LIBRARY_IMPL(LLAMITA_OPS, CPU, m) { m.impl("sample_top_k", sample_top_k); }
