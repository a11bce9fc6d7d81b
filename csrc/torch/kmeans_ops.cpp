// CPU kernel of onerec_C::kmeans_step: validates (again) and calls the plain C++ core.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../core/kmeans.h"

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> kmeans_step_cpu(
    const at::Tensor& x, const at::Tensor& centroids) {
  TORCH_CHECK(x.dim() == 2, "kmeans_step: x must be (N, D), got ", x.sizes());
  TORCH_CHECK(centroids.dim() == 2, "kmeans_step: centroids must be (K, D), got ", centroids.sizes());
  TORCH_CHECK(centroids.size(1) == x.size(1), "kmeans_step: D mismatch ", x.size(1), " vs ",
              centroids.size(1));
  TORCH_CHECK(x.device().is_cpu() && centroids.device().is_cpu(),
              "kmeans_step (cpp): CPU tensors only");
  TORCH_CHECK(x.scalar_type() == centroids.scalar_type(), "kmeans_step: dtype mismatch");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "kmeans_step: floating inputs only");
  const int64_t n = x.size(0), d = x.size(1), k = centroids.size(0);
  TORCH_CHECK(k > 0 && d > 0, "kmeans_step: K and D must be >= 1");
  // Low precision is widened once; the core works in float32 (sums and inertia in double).
  at::Tensor xf = x.to(at::kFloat).contiguous();
  at::Tensor cf = centroids.to(at::kFloat).contiguous();
  at::Tensor assignments = at::empty({n}, x.options().dtype(at::kLong));
  at::Tensor sums = at::empty({k, d}, x.options().dtype(at::kFloat));
  at::Tensor counts = at::empty({k}, x.options().dtype(at::kLong));
  double inertia = 0.0;
  onerec::kmeans_step_cpu(xf.data_ptr<float>(), cf.data_ptr<float>(), n, d, k,
                          assignments.data_ptr<int64_t>(), sums.data_ptr<float>(),
                          counts.data_ptr<int64_t>(), &inertia, at::get_num_threads());
  at::Tensor inertia_t = at::scalar_tensor(inertia, x.options().dtype(at::kFloat));
  return {assignments, sums, counts, inertia_t};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(onerec_C, m) {
  m.def("kmeans_step(Tensor x, Tensor centroids) -> (Tensor assignments, Tensor sums, "
        "Tensor counts, Tensor inertia)");
}

TORCH_LIBRARY_IMPL(onerec_C, CPU, m) { m.impl("kmeans_step", &kmeans_step_cpu); }
