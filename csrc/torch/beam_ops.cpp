// CPU kernels of the trie ops: onerec_C::trie_build and onerec_C::trie_beam_step. The CUDA
// kernel of trie_beam_step is in csrc/torch_cuda/beam_cuda_ops.cpp. The Python layer
// (onerec_kernels/beam/op.py) validates first; these checks repeat the ones that guard memory.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <limits>
#include <vector>

#include "../core/beam_search.h"
#include "../core/trie.h"

namespace {

std::vector<at::Tensor> trie_build_cpu(const at::Tensor& codes, at::IntArrayRef vocab_sizes) {
  TORCH_CHECK_VALUE(codes.dim() == 2, "trie_build: codes must be (N, L), got ", codes.sizes());
  TORCH_CHECK_TYPE(codes.scalar_type() == at::kLong, "trie_build: codes must be int64, got ",
                   codes.scalar_type());
  TORCH_CHECK_VALUE(codes.device().is_cpu(), "trie_build: codes must be on the CPU");
  const int64_t n = codes.size(0), num_levels = codes.size(1);
  TORCH_CHECK_VALUE(num_levels >= 1, "trie_build: codes must have L >= 1 columns");
  TORCH_CHECK_VALUE(static_cast<int64_t>(vocab_sizes.size()) == num_levels,
                    "trie_build: vocab_sizes must have L = ", num_levels, " entries, got ",
                    vocab_sizes.size());
  for (int64_t v : vocab_sizes) TORCH_CHECK_VALUE(v >= 1, "trie_build: vocab sizes must be >= 1");
  at::Tensor c = codes.contiguous();
  onerec::Trie trie;
  const onerec::TrieBuildError err =
      onerec::trie_build(c.data_ptr<int64_t>(), n, num_levels, vocab_sizes.data(), &trie);
  TORCH_CHECK_VALUE(err.status != onerec::TrieBuildStatus::kOutOfVocab,
                    "SemanticIdTrie: codes[", err.row, ", ", err.level, "] = ", err.value,
                    " is outside the vocabulary [0, ", vocab_sizes[err.level < 0 ? 0 : err.level],
                    ") of level ", err.level);
  TORCH_CHECK_VALUE(err.status != onerec::TrieBuildStatus::kDuplicate,
                    "SemanticIdTrie: duplicate code rows: codes[", err.row, "] == codes[",
                    err.other, "]; every item needs a distinct semantic ID");
  std::vector<at::Tensor> out;
  auto to_tensor = [](std::vector<int64_t>& v) {
    at::Tensor t = at::empty({static_cast<int64_t>(v.size())}, at::kLong);
    std::copy(v.begin(), v.end(), t.data_ptr<int64_t>());
    return t;
  };
  for (auto& lvl : trie.levels) {
    out.push_back(to_tensor(lvl.offsets));
    out.push_back(to_tensor(lvl.tokens));
  }
  out.push_back(to_tensor(trie.leaf_rows));
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> trie_beam_step_cpu(
    const at::Tensor& log_probs, const at::Tensor& beam_scores, const at::Tensor& beam_states,
    const at::Tensor& offsets, const at::Tensor& tokens, int64_t beam_width,
    int64_t /*max_branching: a GPU launch hint*/, bool from_logits) {
  TORCH_CHECK_VALUE(log_probs.dim() == 3, "trie_beam_step: log_probs must be (B, W_in, V), got ",
                    log_probs.sizes());
  const int64_t B = log_probs.size(0), W = log_probs.size(1), V = log_probs.size(2);
  TORCH_CHECK_VALUE(beam_scores.sizes() == at::IntArrayRef({B, W}),
                    "trie_beam_step: beam_scores must be (B, W_in) = (", B, ", ", W, "), got ",
                    beam_scores.sizes());
  TORCH_CHECK_VALUE(beam_states.sizes() == at::IntArrayRef({B, W}),
                    "trie_beam_step: beam_states must be (B, W_in) = (", B, ", ", W, "), got ",
                    beam_states.sizes());
  TORCH_CHECK_VALUE(offsets.dim() == 1 && offsets.numel() >= 1,
                    "trie_beam_step: offsets must be (num_nodes + 1,)");
  TORCH_CHECK_VALUE(tokens.dim() == 1, "trie_beam_step: tokens must be 1-D");
  TORCH_CHECK_TYPE(at::isFloatingType(log_probs.scalar_type()),
                   "trie_beam_step: log_probs must be floating");
  TORCH_CHECK_TYPE(beam_scores.scalar_type() == at::kFloat,
                   "trie_beam_step: beam_scores must be float32");
  TORCH_CHECK_TYPE(beam_states.scalar_type() == at::kLong && offsets.scalar_type() == at::kLong &&
                       tokens.scalar_type() == at::kLong,
                   "trie_beam_step: beam_states, offsets and tokens must be int64");
  TORCH_CHECK_VALUE(beam_width >= 1, "trie_beam_step: beam_width must be >= 1, got ", beam_width);
  TORCH_CHECK_VALUE(V >= 1, "trie_beam_step: V must be >= 1");
  TORCH_CHECK_VALUE(W * V < static_cast<int64_t>(std::numeric_limits<uint32_t>::max()),
                    "trie_beam_step: W_in * V must be < 2^32 - 1, got ", W, " * ", V);
  at::Tensor lp = log_probs.to(at::kFloat).contiguous();
  at::Tensor bs = beam_scores.contiguous(), st = beam_states.contiguous();
  at::Tensor off = offsets.contiguous(), tok = tokens.contiguous();
  auto opts = beam_states.options();
  at::Tensor scores = at::empty({B, beam_width}, beam_scores.options());
  at::Tensor parents = at::empty({B, beam_width}, opts);
  at::Tensor out_tokens = at::empty({B, beam_width}, opts);
  at::Tensor states = at::empty({B, beam_width}, opts);
  onerec::BeamStepInputs in{lp.data_ptr<float>(), bs.data_ptr<float>(), st.data_ptr<int64_t>(),
                            off.data_ptr<int64_t>(), tok.data_ptr<int64_t>(), off.numel() - 1,
                            tok.numel(), B, W, V, beam_width, from_logits};
  onerec::BeamStepOutputs out{scores.data_ptr<float>(), parents.data_ptr<int64_t>(),
                              out_tokens.data_ptr<int64_t>(), states.data_ptr<int64_t>()};
  onerec::beam_step_cpu(in, out, at::get_num_threads());
  return {scores, parents, out_tokens, states};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(onerec_C, m) {
  m.def("trie_build(Tensor codes, int[] vocab_sizes) -> Tensor[]");
  m.def(
      "trie_beam_step(Tensor log_probs, Tensor beam_scores, Tensor beam_states, Tensor offsets, "
      "Tensor tokens, int beam_width, int max_branching, bool from_logits) -> (Tensor scores, "
      "Tensor parents, "
      "Tensor tokens, Tensor states)");
}

TORCH_LIBRARY_IMPL(onerec_C, CPU, m) {
  m.impl("trie_build", &trie_build_cpu);
  m.impl("trie_beam_step", &trie_beam_step_cpu);
}
