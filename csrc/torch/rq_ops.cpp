// CPU kernel of onerec_C::rq_assign: validates (again) and calls the plain C++ core.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "../core/rq_assign.h"

namespace {

// return_residual = false: no (N, D) residual is allocated or written (an empty (0, D) one is
// returned), the core keeps each row block's residual in its own small buffer.
std::tuple<at::Tensor, at::Tensor> rq_assign_cpu(const at::Tensor& x, const at::Tensor& codebooks,
                                                 bool return_residual) {
  TORCH_CHECK(x.dim() == 2, "rq_assign: x must be (N, D), got ", x.sizes());
  TORCH_CHECK(codebooks.dim() == 3, "rq_assign: codebooks must be (L, K, D), got ", codebooks.sizes());
  TORCH_CHECK(codebooks.size(2) == x.size(1), "rq_assign: D mismatch ", x.size(1), " vs ",
              codebooks.size(2));
  TORCH_CHECK(x.device().is_cpu() && codebooks.device().is_cpu(), "rq_assign (cpp): CPU tensors only");
  TORCH_CHECK(x.scalar_type() == codebooks.scalar_type(), "rq_assign: dtype mismatch");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "rq_assign: floating inputs only");
  const int64_t n = x.size(0), d = x.size(1), levels = codebooks.size(0), k = codebooks.size(1);
  TORCH_CHECK(levels > 0 && k > 0 && d > 0, "rq_assign: L, K and D must be >= 1");
  // Low precision is widened once; the core works in float32.
  at::Tensor xf = x.to(at::kFloat).contiguous();
  at::Tensor cf = codebooks.to(at::kFloat).contiguous();
  at::Tensor codes = at::empty({n, levels}, x.options().dtype(at::kLong));
  at::Tensor residual = at::empty({return_residual ? n : 0, d}, x.options().dtype(at::kFloat));
  onerec::rq_assign_cpu(xf.data_ptr<float>(), cf.data_ptr<float>(), n, d, levels, k,
                        codes.data_ptr<int64_t>(),
                        return_residual ? residual.data_ptr<float>() : nullptr,
                        at::get_num_threads());
  return {codes, residual.to(x.scalar_type())};
}

// The CPU nearest-code path (sse | avx2 | avx512) used by rq_assign and kmeans_step: "" only
// reports [active, best]; a name makes that path active (an error if this CPU lacks it).
std::vector<std::string> cpu_isa(const std::string& request) {
  if (!request.empty()) {
    onerec::CpuIsa want;
    if (request == "sse") {
      want = onerec::CpuIsa::kSse;
    } else if (request == "avx2") {
      want = onerec::CpuIsa::kAvx2;
    } else if (request == "avx512") {
      want = onerec::CpuIsa::kAvx512;
    } else {
      TORCH_CHECK(false, "cpu_isa: request must be '', 'sse', 'avx2' or 'avx512', got '",
                  request, "'");
    }
    TORCH_CHECK(onerec::set_cpu_isa(want), "cpu_isa: this CPU does not support ", request,
                " (best: ", onerec::cpu_isa_name(onerec::best_cpu_isa()), ")");
  }
  return {onerec::cpu_isa_name(onerec::active_cpu_isa()),
          onerec::cpu_isa_name(onerec::best_cpu_isa())};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(onerec_C, m) {
  m.def("rq_assign(Tensor x, Tensor codebooks, bool return_residual) -> (Tensor codes, Tensor residual)");
  m.def("cpu_isa(str request) -> str[]", &cpu_isa);
}

TORCH_LIBRARY_IMPL(onerec_C, CPU, m) { m.impl("rq_assign", &rq_assign_cpu); }
