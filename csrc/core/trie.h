// Semantic-ID trie, plain C++: built from an (N, L) code matrix into per-level CSR arrays that
// the beam-search step (beam_step.h) reads directly, on the CPU or copied to the GPU.
//
// Layout. Nodes of depth t (prefixes of t codes) are numbered 0..num_nodes(t)-1 in lexicographic
// order of their prefixes; depth 0 is the root (node 0). Level t (0 <= t < L) links depth t to
// depth t+1:
//   offsets[t]  (num_nodes(t) + 1,)   children of node s are nodes offsets[t][s] .. [s+1]-1,
//   tokens[t]   (num_nodes(t + 1),)   the code of each depth-(t+1) node, ascending per parent.
// Because nodes are numbered in prefix order, a node's children are contiguous and the child
// id is the CSR position itself (no separate child-id array). Depth-L nodes are the leaves, one
// per code row: leaf_rows[leaf] is the row of `codes` it came from.
#pragma once
#include <cstdint>
#include <vector>

namespace onerec {

struct TrieLevel {
  std::vector<int64_t> offsets;
  std::vector<int64_t> tokens;
};

struct Trie {
  std::vector<TrieLevel> levels;   // L levels
  std::vector<int64_t> leaf_rows;  // (N,) row of `codes` of each leaf
};

enum class TrieBuildStatus { kOk = 0, kOutOfVocab = 1, kDuplicate = 2 };

struct TrieBuildError {
  TrieBuildStatus status = TrieBuildStatus::kOk;
  int64_t row = -1;    // out of vocab: the first bad row; duplicate: the lower of the two rows
  int64_t other = -1;  // duplicate: the higher row
  int64_t level = -1;  // out of vocab: the column
  int64_t value = 0;   // out of vocab: the code found there
};

// codes: (n, num_levels) row-major; vocab_sizes: (num_levels,), each >= 1. On error, `trie` is
// left empty and the returned error names the offending rows.
TrieBuildError trie_build(const int64_t* codes, int64_t n, int64_t num_levels,
                          const int64_t* vocab_sizes, Trie* trie);

// The leaf of a full code row (num_levels codes), or -1 when it is not an item.
int64_t trie_find_leaf(const Trie& trie, const int64_t* code);

}  // namespace onerec
