#include "beam_search.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>

#include "beam_step.h"
#include "parallel.h"

namespace onerec {

void radix_topk_keys(const uint64_t* keys, int64_t n, int64_t k, std::vector<uint64_t>* out) {
  out->clear();
  beam::RadixState st = beam::radix_init(k);
  int64_t hist[beam::kRadixBins];
  while (!st.done) {
    std::fill(hist, hist + beam::kRadixBins, int64_t{0});
    for (int64_t i = 0; i < n; ++i) {
      if (beam::radix_in_play(st, keys[i])) ++hist[beam::radix_digit(st, keys[i])];
    }
    beam::radix_pick(st, hist);
  }
  for (int64_t i = 0; i < n; ++i) {
    if (beam::radix_selected(st, keys[i])) out->push_back(keys[i]);
  }
  std::sort(out->begin(), out->end(), std::greater<uint64_t>());
  out->resize(static_cast<size_t>(std::max<int64_t>(k, 0)), beam::kInvalidKey);
}

namespace {

// log-sum-exp of one row; NaN anywhere gives NaN and an all -inf row gives NaN scores later
// (x - lse = -inf - -inf), so such beams produce no candidates, as with torch.log_softmax.
float row_lse(const float* x, int64_t n) {
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < n; ++i) m = std::max(m, x[i]);  // ignores NaN; the sum catches it
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += std::exp(static_cast<double>(x[i]) - m);
  return static_cast<float>(m + std::log(s));
}

void step_one_user(const BeamStepInputs& in, const BeamStepOutputs& out, int64_t b,
                   int num_splits, std::vector<uint64_t>& keys, std::vector<uint64_t>& merged,
                   std::vector<uint64_t>& part) {
  const int64_t V = in.vocab, W = in.beams_in, K = in.beams_out;
  const float* lp_user = in.log_probs + b * W * V;
  const float* bs_user = in.beam_scores + b * W;
  const int64_t* st_user = in.beam_states + b * W;
  keys.clear();
  for (int64_t w = 0; w < W; ++w) {
    int64_t begin;
    const int64_t count = beam::live_child_count(in.offsets, in.num_nodes, in.num_children,
                                                 st_user[w], bs_user[w], V, &begin);
    if (count == 0) continue;
    const float* row = lp_user + w * V;
    const float lse = in.from_logits ? row_lse(row, V) : 0.f;
    for (int64_t j = 0; j < count; ++j) {
      const int64_t tok = in.tokens[begin + j];
      if (tok < 0 || tok >= V) continue;
      const uint64_t key = beam::candidate_key(bs_user[w], row[tok], lse, w, j, V);
      if (key != beam::kInvalidKey) keys.push_back(key);
    }
  }
  const int64_t n = static_cast<int64_t>(keys.size());
  if (num_splits <= 1) {
    radix_topk_keys(keys.data(), n, K, &merged);
  } else {
    std::vector<uint64_t> firsts;
    for (int s = 0; s < num_splits; ++s) {
      const int64_t lo = n * s / num_splits, hi = n * (s + 1) / num_splits;
      radix_topk_keys(keys.data() + lo, hi - lo, K, &part);
      firsts.insert(firsts.end(), part.begin(), part.end());
    }
    radix_topk_keys(firsts.data(), static_cast<int64_t>(firsts.size()), K, &merged);
  }
  for (int64_t r = 0; r < K; ++r) {
    beam::write_slot(merged[static_cast<size_t>(r)], st_user, in.offsets, in.tokens, V,
                     out.scores + b * K + r, out.parents + b * K + r, out.tokens + b * K + r,
                     out.states + b * K + r);
  }
}

}  // namespace

void beam_step_cpu(const BeamStepInputs& in, const BeamStepOutputs& out, int num_threads,
                   int num_splits) {
  if (in.batch <= 0 || in.beams_out <= 0) return;
  parallel_for(in.batch, 1, num_threads, [&](int64_t begin, int64_t end) {
    std::vector<uint64_t> keys, merged, part;
    for (int64_t b = begin; b < end; ++b) step_one_user(in, out, b, num_splits, keys, merged, part);
  });
}

}  // namespace onerec
