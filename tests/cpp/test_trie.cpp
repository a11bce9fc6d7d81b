// CTest executable for the trie and the CPU beam-search step (torch-free core): the shared
// step logic of beam_step.h (key order, radix select, two-stage selection) against std::sort.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <limits>
#include <random>
#include <set>
#include <tuple>
#include <vector>

#include "core/beam_search.h"
#include "core/beam_step.h"
#include "core/trie.h"
#include "check.h"


namespace bm = onerec::beam;

static void test_key_order() {
  const float vals[] = {-std::numeric_limits<float>::max(), -3.5f, -1e-30f, -0.0f, 0.0f, 1e-30f,
                        2.f, std::numeric_limits<float>::infinity()};
  for (size_t i = 0; i + 1 < sizeof(vals) / sizeof(vals[0]); ++i) {
    CHECK(bm::make_key(vals[i], 5) <= bm::make_key(vals[i + 1], 5), "order %zu", i);
    CHECK(bm::key_score(bm::make_key(vals[i], 77)) == vals[i], "round trip %zu", i);
    CHECK(bm::key_candidate(bm::make_key(vals[i], 77)) == 77, "candidate %zu", i);
  }
  CHECK(bm::make_key(1.f, 3) > bm::make_key(1.f, 4), "equal scores: lower candidate wins");
  CHECK(bm::make_key(-0.f, 3) > bm::make_key(0.f, 4) && bm::make_key(0.f, 3) > bm::make_key(-0.f, 4),
        "-0 and +0 tie: lower candidate wins");
  CHECK(bm::make_key(-std::numeric_limits<float>::infinity(), 0) == bm::kInvalidKey, "-inf");
  CHECK(bm::make_key(std::nanf(""), 0) == bm::kInvalidKey, "nan");
  CHECK(bm::make_key(-std::numeric_limits<float>::max(), 0xFFFFFFFEull) != bm::kInvalidKey, "min");
}

static void test_radix_topk(unsigned seed) {
  std::mt19937_64 gen(seed);
  for (int64_t n : {0, 1, 7, 97, 1025, 5000}) {
    for (int64_t k : {1, 3, 128, 600}) {
      std::vector<uint64_t> keys;
      std::set<uint64_t> seen;
      while (static_cast<int64_t>(keys.size()) < n) {
        // clustered high bits so several passes are needed; some invalid (0) keys
        uint64_t key = (gen() % 4 == 0) ? 0 : ((gen() % 3) << 40) | (gen() & 0xFFFFFull);
        if (key == 0 || seen.insert(key).second) keys.push_back(key);
      }
      std::vector<uint64_t> got, want;
      onerec::radix_topk_keys(keys.data(), n, k, &got);
      for (uint64_t key : keys) if (key) want.push_back(key);
      std::sort(want.begin(), want.end(), std::greater<uint64_t>());
      want.resize(static_cast<size_t>(k), 0);
      CHECK(got == want, "radix top-k n=%lld k=%lld", (long long)n, (long long)k);
    }
  }
}

static std::vector<int64_t> random_codes(int64_t n, int64_t levels, int64_t vocab, unsigned seed) {
  std::mt19937 gen(seed);
  std::set<std::vector<int64_t>> rows;
  std::uniform_int_distribution<int64_t> d(0, vocab - 1);
  while (static_cast<int64_t>(rows.size()) < n) {
    std::vector<int64_t> r(static_cast<size_t>(levels));
    for (auto& c : r) c = d(gen);
    rows.insert(r);
  }
  std::vector<std::vector<int64_t>> v(rows.begin(), rows.end());
  std::shuffle(v.begin(), v.end(), gen);
  std::vector<int64_t> flat;
  for (auto& r : v) flat.insert(flat.end(), r.begin(), r.end());
  return flat;
}

static void test_trie_build(int64_t n, int64_t levels, int64_t vocab, unsigned seed) {
  std::vector<int64_t> codes = random_codes(n, levels, vocab, seed);
  std::vector<int64_t> vocabs(static_cast<size_t>(levels), vocab);
  onerec::Trie trie;
  auto err = onerec::trie_build(codes.data(), n, levels, vocabs.data(), &trie);
  CHECK(err.status == onerec::TrieBuildStatus::kOk, "build failed");
  CHECK(static_cast<int64_t>(trie.leaf_rows.size()) == n, "leaf count");
  for (int64_t i = 0; i < n; ++i) {
    const int64_t leaf = onerec::trie_find_leaf(trie, codes.data() + i * levels);
    CHECK(leaf >= 0 && trie.leaf_rows[static_cast<size_t>(leaf)] == i, "row %lld", (long long)i);
  }
  for (auto& lvl : trie.levels) {
    for (size_t s = 0; s + 1 < lvl.offsets.size(); ++s) {
      CHECK(lvl.offsets[s] < lvl.offsets[s + 1], "every node has a child");
      for (int64_t c = lvl.offsets[s] + 1; c < lvl.offsets[s + 1]; ++c) {
        CHECK(lvl.tokens[static_cast<size_t>(c - 1)] < lvl.tokens[static_cast<size_t>(c)],
              "children sorted");
      }
    }
  }
  std::vector<int64_t> bad(static_cast<size_t>(levels), vocab);  // outside the vocab
  CHECK(onerec::trie_find_leaf(trie, bad.data()) == -1, "non-item found");
}

static void test_build_errors() {
  const int64_t vocabs[] = {3, 3};
  onerec::Trie trie;
  const int64_t dup[] = {0, 1, 2, 2, 1, 0, 2, 2};
  auto e = onerec::trie_build(dup, 4, 2, vocabs, &trie);
  CHECK(e.status == onerec::TrieBuildStatus::kDuplicate && e.row == 1 && e.other == 3, "dup");
  const int64_t oov[] = {0, 1, 3, 0};
  e = onerec::trie_build(oov, 2, 2, vocabs, &trie);
  CHECK(e.status == onerec::TrieBuildStatus::kOutOfVocab && e.row == 1 && e.level == 0 &&
            e.value == 3, "oov");
}

// Brute force of one step: every candidate's (score, beam, rank) sorted by the documented rule.
static void test_step(int64_t n, int64_t levels, int64_t vocab, int64_t B, int64_t W, unsigned seed) {
  std::vector<int64_t> codes = random_codes(n, levels, vocab, seed);
  std::vector<int64_t> vocabs(static_cast<size_t>(levels), vocab);
  onerec::Trie trie;
  onerec::trie_build(codes.data(), n, levels, vocabs.data(), &trie);
  std::mt19937 gen(seed);
  std::normal_distribution<float> nd;
  std::vector<float> scores(static_cast<size_t>(B), 0.f);
  std::vector<int64_t> states(static_cast<size_t>(B), 0);
  int64_t w_in = 1;
  for (int64_t t = 0; t < levels; ++t) {
    const auto& lvl = trie.levels[static_cast<size_t>(t)];
    std::vector<float> lp(static_cast<size_t>(B * w_in * vocab));
    for (auto& x : lp) x = (gen() % 50 == 0) ? std::nanf("") : std::round(nd(gen) * 4) / 4;  // ties
    onerec::BeamStepInputs in{lp.data(), scores.data(), states.data(), lvl.offsets.data(),
                              lvl.tokens.data(), static_cast<int64_t>(lvl.offsets.size()) - 1,
                              static_cast<int64_t>(lvl.tokens.size()), B, w_in, vocab, W, false};
    std::vector<float> o_sc[2];
    std::vector<int64_t> o_par[2], o_tok[2], o_st[2];
    for (int v = 0; v < 2; ++v) {
      o_sc[v].resize(static_cast<size_t>(B * W));
      o_par[v].resize(static_cast<size_t>(B * W));
      o_tok[v].resize(static_cast<size_t>(B * W));
      o_st[v].resize(static_cast<size_t>(B * W));
      onerec::BeamStepOutputs out{o_sc[v].data(), o_par[v].data(), o_tok[v].data(), o_st[v].data()};
      onerec::beam_step_cpu(in, out, 2, v == 0 ? 1 : 3);  // single stage and three splits
    }
    CHECK(o_sc[0] == o_sc[1] && o_par[0] == o_par[1] && o_tok[0] == o_tok[1] && o_st[0] == o_st[1],
          "two-stage differs at level %lld", (long long)t);
    for (int64_t b = 0; b < B; ++b) {
      std::vector<std::tuple<float, int64_t, int64_t>> cands;  // (-score, beam, rank)
      for (int64_t w = 0; w < w_in; ++w) {
        const int64_t s = states[static_cast<size_t>(b * w_in + w)];
        const float bs = scores[static_cast<size_t>(b * w_in + w)];
        if (s < 0 || std::isinf(bs) || std::isnan(bs)) continue;
        for (int64_t c = lvl.offsets[static_cast<size_t>(s)]; c < lvl.offsets[static_cast<size_t>(s + 1)]; ++c) {
          const float sc = bs + lp[static_cast<size_t>((b * w_in + w) * vocab + lvl.tokens[static_cast<size_t>(c)])];
          if (!std::isnan(sc) && !std::isinf(sc)) cands.emplace_back(-sc, w, c);
        }
      }
      std::sort(cands.begin(), cands.end());
      for (int64_t r = 0; r < W; ++r) {
        const size_t o = static_cast<size_t>(b * W + r);
        if (r < static_cast<int64_t>(cands.size())) {
          auto [neg, w, c] = cands[static_cast<size_t>(r)];
          CHECK(o_sc[0][o] == -neg && o_par[0][o] == w && o_st[0][o] == c &&
                    o_tok[0][o] == lvl.tokens[static_cast<size_t>(c)],
                "level %lld user %lld slot %lld", (long long)t, (long long)b, (long long)r);
        } else {
          CHECK(std::isinf(o_sc[0][o]) && o_sc[0][o] < 0 && o_tok[0][o] == -1 && o_st[0][o] == -1 &&
                    o_par[0][o] == 0, "padding level %lld user %lld slot %lld", (long long)t,
                (long long)b, (long long)r);
        }
      }
    }
    scores = o_sc[0];
    states = o_st[0];
    w_in = W;
  }
}

int main() {
  test_key_order();
  test_radix_topk(1);
  test_build_errors();
  test_trie_build(1, 1, 1, 1);
  test_trie_build(27, 3, 3, 2);
  test_trie_build(2000, 3, 64, 3);
  test_trie_build(500, 4, 300000, 4);  // 4 x 19 bits: the row-comparison sort path
  test_step(1, 1, 1, 1, 1, 5);
  test_step(27, 3, 3, 5, 7, 6);
  test_step(300, 3, 16, 5, 7, 7);
  test_step(3000, 3, 64, 2, 128, 8);
  test_step(5000, 2, 256, 1, 600, 9);
  if (g_failures) {
    std::fprintf(stderr, "%d check(s) failed\n", g_failures);
    return 1;
  }
  std::printf("all trie / beam-step C++ tests passed\n");
  return 0;
}
