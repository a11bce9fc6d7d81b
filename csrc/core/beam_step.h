// Per-candidate logic of one trie-constrained beam-search step, shared by the CPU core
// (csrc/core/beam_search.cpp) and the CUDA kernels (csrc/cuda/beam_search.cu), so the CPU tests
// exercise exactly what the GPU runs. Plain C++ (no torch, no STL containers): every function is
// ONEREC_HD, i.e. __host__ __device__ under nvcc.
//
// Vocabulary of a step (level t of the trie):
//   beam state s   a node of the trie at depth t (a prefix of t codes); -1 is the dead state.
//   children of s  CSR: child node ids offsets[s] .. offsets[s+1]-1 (nodes of depth t+1), with
//                  tokens[child] their codes, sorted ascending within each parent.
//   candidate      (beam w, child rank j); its score is beam_score[w] + log_prob[w, tokens[child]].
//
// Ranking: every valid candidate gets a unique 64-bit key, larger = better:
//   high 32 bits  the score's float bits mapped to an order-preserving unsigned integer,
//   low 32 bits   0xFFFFFFFF - (w * V + j), so on equal scores the lower beam, then the lower
//                 child rank (= the lower token, children being sorted) wins.
// The top beam_width keys of a user are the step's result, best first. Candidates whose score
// is NaN or -inf are not candidates (key 0, which no valid candidate has): outputs past the
// valid candidates are padding (score -inf, token -1, dead state -1, parent 0).
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define ONEREC_HD __host__ __device__ __forceinline__
#else
#define ONEREC_HD inline
#endif

namespace onerec {
namespace beam {

constexpr uint64_t kInvalidKey = 0;
constexpr int kRadixBits = 8;
constexpr int kRadixBins = 1 << kRadixBits;
constexpr int kKeyBits = 64;

ONEREC_HD uint32_t float_bits(float x) {
  union {
    float f;
    uint32_t u;
  } v;
  v.f = x;
  return v.u;
}

ONEREC_HD float bits_float(uint32_t u) {
  union {
    float f;
    uint32_t u;
  } v;
  v.u = u;
  return v.f;
}

// Checked on the bits so --use_fast_math / -ffast-math cannot fold the test away.
ONEREC_HD bool is_nan_or_neg_inf(float x) {
  const uint32_t u = float_bits(x);
  return (u & 0x7FFFFFFFu) > 0x7F800000u || u == 0xFF800000u;
}

// Monotone map float -> uint32 (for non-NaN inputs): a < b  <=>  ordered(a) < ordered(b).
// -0 maps like +0: the two compare equal, so between them the tie rule must decide.
ONEREC_HD uint32_t ordered_from_float(float x) {
  uint32_t u = float_bits(x);
  if (u == 0x80000000u) u = 0u;
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

ONEREC_HD float float_from_ordered(uint32_t o) {
  return bits_float((o & 0x80000000u) ? (o & 0x7FFFFFFFu) : ~o);
}

// cand = w * V + j must stay below 2^32 - 1 (checked by the bindings: W_in * V < 2^32 - 1).
ONEREC_HD uint64_t make_key(float score, uint64_t cand) {
  if (is_nan_or_neg_inf(score)) return kInvalidKey;
  // -inf maps to 0x007FFFFF; every other non-NaN float maps higher, so the key is never 0.
  return (static_cast<uint64_t>(ordered_from_float(score)) << 32) |
         static_cast<uint64_t>(0xFFFFFFFFu - static_cast<uint32_t>(cand));
}

ONEREC_HD float key_score(uint64_t key) { return float_from_ordered(static_cast<uint32_t>(key >> 32)); }

ONEREC_HD uint64_t key_candidate(uint64_t key) {
  return static_cast<uint64_t>(0xFFFFFFFFu - static_cast<uint32_t>(key & 0xFFFFFFFFull));
}

// The children [begin, end) of `state` in the CSR level, with every index bounds-checked so a
// corrupted state or trie can never read out of range (an invalid state has no children).
ONEREC_HD bool child_range(const int64_t* offsets, int64_t num_nodes, int64_t num_children,
                           int64_t state, int64_t* begin, int64_t* end) {
  *begin = 0;
  *end = 0;
  if (state < 0 || state >= num_nodes) return false;
  int64_t b = offsets[state], e = offsets[state + 1];
  if (b < 0) b = 0;
  if (e > num_children) e = num_children;
  if (e <= b) return false;
  *begin = b;
  *end = e;
  return true;
}

// A beam expands only when its state is a node and its score is neither NaN nor -inf (such a
// beam is dead: all its candidates would be invalid anyway). Returns its child count (<= V).
ONEREC_HD int64_t live_child_count(const int64_t* offsets, int64_t num_nodes, int64_t num_children,
                                   int64_t state, float beam_score, int64_t vocab, int64_t* begin) {
  int64_t b, e;
  if (is_nan_or_neg_inf(beam_score) ||
      !child_range(offsets, num_nodes, num_children, state, &b, &e)) {
    *begin = 0;
    return 0;
  }
  *begin = b;
  const int64_t n = e - b;
  return n < vocab ? n : vocab;  // j < V keeps w * V + j decodable; a valid trie has n <= V
}

// The score of one candidate: beam score + log-prob (log-prob = logit - lse when the step fuses
// the log_softmax; lse = 0 otherwise). A token outside [0, V) is not a candidate.
ONEREC_HD uint64_t candidate_key(float beam_score, float log_prob_or_logit, float lse, int64_t w,
                                 int64_t j, int64_t vocab) {
  const float lp = log_prob_or_logit - lse;
  const float score = beam_score + lp;
  return make_key(score, static_cast<uint64_t>(w) * static_cast<uint64_t>(vocab) +
                             static_cast<uint64_t>(j));
}

// Radix select of the k largest keys, 8 bits per pass from the top. After a pass the selected
// set is {key != 0 : (key & mask) >= prefix}; `done` says it holds exactly min(k, #valid) keys.
struct RadixState {
  uint64_t prefix;
  uint64_t mask;
  int64_t k_rem;  // keys still to take among those with (key & mask) == prefix
  int shift;      // bit position of the next digit
  bool done;
};

ONEREC_HD RadixState radix_init(int64_t k) {
  RadixState st;
  st.prefix = 0;
  st.mask = 0;
  st.k_rem = k;
  st.shift = kKeyBits - kRadixBits;
  st.done = k <= 0;
  return st;
}

// Whether `key` takes part in the histogram of the current pass.
ONEREC_HD bool radix_in_play(const RadixState& st, uint64_t key) {
  return key != kInvalidKey && (key & st.mask) == st.prefix;
}

ONEREC_HD int radix_digit(const RadixState& st, uint64_t key) {
  return static_cast<int>((key >> st.shift) & (kRadixBins - 1));
}

ONEREC_HD bool radix_selected(const RadixState& st, uint64_t key) {
  return key != kInvalidKey && (key & st.mask) >= st.prefix;
}

// Consumes one pass's histogram (counts of digits among the keys in play) and fixes the digit.
template <typename Count>
ONEREC_HD void radix_pick(RadixState& st, const Count* hist) {
  int64_t above = 0;
  for (int d = kRadixBins - 1; d >= 0; --d) {
    const int64_t c = static_cast<int64_t>(hist[d]);
    if (above + c >= st.k_rem) {
      st.k_rem -= above;
      st.prefix |= static_cast<uint64_t>(d) << st.shift;
      st.mask |= static_cast<uint64_t>(kRadixBins - 1) << st.shift;
      // Keys are unique, so the last pass always ends here with c == k_rem == 1.
      if (c == st.k_rem || st.shift == 0) st.done = true;
      st.shift -= kRadixBits;
      return;
    }
    above += c;
  }
  // Fewer keys in play than k_rem (only possible in the first pass): take every valid key.
  st.prefix = 0;
  st.mask = 0;
  st.done = true;
}

// Decodes a selected key (or kInvalidKey, giving padding) into the four outputs of one slot.
ONEREC_HD void write_slot(uint64_t key, const int64_t* beam_states, const int64_t* offsets,
                          const int64_t* tokens, int64_t vocab, float* score_out,
                          int64_t* parent_out, int64_t* token_out, int64_t* state_out) {
  if (key == kInvalidKey) {
    *score_out = bits_float(0xFF800000u);  // -inf
    *parent_out = 0;
    *token_out = -1;
    *state_out = -1;
    return;
  }
  const uint64_t cand = key_candidate(key);
  const int64_t w = static_cast<int64_t>(cand / static_cast<uint64_t>(vocab));
  const int64_t j = static_cast<int64_t>(cand % static_cast<uint64_t>(vocab));
  // Only keys of live candidates are ever made, so the state and child are in range here
  // (the first child clamped at 0 exactly as child_range does).
  const int64_t first = offsets[beam_states[w]];
  const int64_t child = (first < 0 ? 0 : first) + j;
  *score_out = key_score(key);
  *parent_out = w;
  *token_out = tokens[child];
  *state_out = child;
}

}  // namespace beam
}  // namespace onerec
