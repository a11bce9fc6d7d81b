#include "trie.h"

#include <algorithm>
#include <numeric>

namespace onerec {

namespace {

bool rows_less(const int64_t* codes, int64_t num_levels, int64_t a, int64_t b) {
  const int64_t* ra = codes + a * num_levels;
  const int64_t* rb = codes + b * num_levels;
  for (int64_t t = 0; t < num_levels; ++t) {
    if (ra[t] != rb[t]) return ra[t] < rb[t];
  }
  return a < b;  // equal rows (duplicates) stay in row order, so errors name the lower row first
}

int bits_for(int64_t v) {
  int b = 0;
  while ((int64_t{1} << b) < v) ++b;
  return b;
}

}  // namespace

TrieBuildError trie_build(const int64_t* codes, int64_t n, int64_t num_levels,
                          const int64_t* vocab_sizes, Trie* trie) {
  TrieBuildError err;
  trie->levels.clear();
  trie->leaf_rows.clear();
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t t = 0; t < num_levels; ++t) {
      const int64_t c = codes[i * num_levels + t];
      if (c < 0 || c >= vocab_sizes[t]) {
        err.status = TrieBuildStatus::kOutOfVocab;
        err.row = i;
        err.level = t;
        err.value = c;
        return err;
      }
    }
  }

  // Lexicographic order of the rows; rows pack into one 64-bit key when the vocabs allow it
  // (3 levels of 8192 codes take 39 bits), which sorts ~5x faster than comparing rows.
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), int64_t{0});
  int total_bits = 0;
  for (int64_t t = 0; t < num_levels; ++t) total_bits += bits_for(vocab_sizes[t]);
  if (total_bits <= 63) {
    std::vector<std::pair<uint64_t, int64_t>> keyed(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      uint64_t key = 0;
      for (int64_t t = 0; t < num_levels; ++t) {
        key = (key << bits_for(vocab_sizes[t])) | static_cast<uint64_t>(codes[i * num_levels + t]);
      }
      keyed[static_cast<size_t>(i)] = {key, i};
    }
    std::sort(keyed.begin(), keyed.end());
    for (int64_t i = 0; i < n; ++i) order[static_cast<size_t>(i)] = keyed[static_cast<size_t>(i)].second;
  } else {
    std::sort(order.begin(), order.end(),
              [&](int64_t a, int64_t b) { return rows_less(codes, num_levels, a, b); });
  }

  // Duplicates are adjacent after the sort; report the pair with the lowest first row.
  for (int64_t i = 1; i < n; ++i) {
    const int64_t a = order[static_cast<size_t>(i - 1)], b = order[static_cast<size_t>(i)];
    if (std::equal(codes + a * num_levels, codes + (a + 1) * num_levels, codes + b * num_levels)) {
      if (err.status != TrieBuildStatus::kDuplicate || a < err.row) {
        err.status = TrieBuildStatus::kDuplicate;
        err.row = a;
        err.other = b;
      }
    }
  }
  if (err.status != TrieBuildStatus::kOk) return err;

  // One pass per level: a row opens a new depth-(t+1) node when its first t+1 codes differ from
  // the previous row's; the node's parent is the current depth-t node.
  trie->levels.resize(static_cast<size_t>(num_levels));
  std::vector<int64_t> node_of_row(static_cast<size_t>(n), 0);  // depth-t node of each sorted row
  int64_t num_nodes = 1;                                          // depth 0: the root
  for (int64_t t = 0; t < num_levels; ++t) {
    TrieLevel& lvl = trie->levels[static_cast<size_t>(t)];
    lvl.offsets.assign(static_cast<size_t>(num_nodes + 1), 0);
    lvl.tokens.clear();
    int64_t next = -1;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t r = order[static_cast<size_t>(i)];
      bool fresh = i == 0;
      if (!fresh) {
        const int64_t p = order[static_cast<size_t>(i - 1)];
        fresh = !std::equal(codes + r * num_levels, codes + r * num_levels + t + 1,
                            codes + p * num_levels);
      }
      if (fresh) {
        ++next;
        lvl.tokens.push_back(codes[r * num_levels + t]);
        ++lvl.offsets[static_cast<size_t>(node_of_row[static_cast<size_t>(i)] + 1)];
      }
      node_of_row[static_cast<size_t>(i)] = next;
    }
    for (int64_t s = 0; s < num_nodes; ++s) {
      lvl.offsets[static_cast<size_t>(s + 1)] += lvl.offsets[static_cast<size_t>(s)];
    }
    num_nodes = next + 1;
  }
  trie->leaf_rows = std::move(order);
  return err;
}

int64_t trie_find_leaf(const Trie& trie, const int64_t* code) {
  int64_t node = 0;
  for (size_t t = 0; t < trie.levels.size(); ++t) {
    const TrieLevel& lvl = trie.levels[t];
    if (node < 0 || node + 1 >= static_cast<int64_t>(lvl.offsets.size())) return -1;
    auto first = lvl.tokens.begin() + lvl.offsets[static_cast<size_t>(node)];
    auto last = lvl.tokens.begin() + lvl.offsets[static_cast<size_t>(node + 1)];
    auto it = std::lower_bound(first, last, code[t]);
    if (it == last || *it != code[t]) return -1;
    node = static_cast<int64_t>(it - lvl.tokens.begin());
  }
  return node;
}

}  // namespace onerec
