// CPU kernels of onerec_C::kmeans_step and onerec_C::grouped_kmeans: validate (again) and call
// the plain C++ core.
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

void check_offsets(const at::Tensor& offsets, const char* name, int64_t total) {
  TORCH_CHECK(offsets.dim() == 1 && offsets.scalar_type() == at::kLong,
              "grouped_kmeans: ", name, " must be a 1-D int64 tensor");
  const int64_t* o = offsets.data_ptr<int64_t>();
  const int64_t len = offsets.size(0);
  TORCH_CHECK(len >= 1 && o[0] == 0 && o[len - 1] == total, "grouped_kmeans: ", name,
              " must start at 0 and end at ", total);
  for (int64_t g = 1; g < len; ++g)
    TORCH_CHECK(o[g] >= o[g - 1], "grouped_kmeans: ", name, " must not decrease");
}

std::tuple<at::Tensor, at::Tensor> grouped_kmeans_cpu(const at::Tensor& x,
                                                      const at::Tensor& centroids,
                                                      const at::Tensor& x_offsets,
                                                      const at::Tensor& centroid_offsets,
                                                      int64_t iters) {
  TORCH_CHECK(x.dim() == 2 && centroids.dim() == 2 && centroids.size(1) == x.size(1),
              "grouped_kmeans: x (N, D) and centroids (K, D) expected, got ", x.sizes(), " and ",
              centroids.sizes());
  TORCH_CHECK(x.device().is_cpu() && centroids.device().is_cpu() && x_offsets.device().is_cpu() &&
                  centroid_offsets.device().is_cpu(),
              "grouped_kmeans (cpp): CPU tensors only");
  TORCH_CHECK(x.scalar_type() == centroids.scalar_type() && at::isFloatingType(x.scalar_type()),
              "grouped_kmeans: x and centroids must share one floating dtype");
  TORCH_CHECK(iters >= 1, "grouped_kmeans: iters must be >= 1, got ", iters);
  TORCH_CHECK(x_offsets.numel() == centroid_offsets.numel(),
              "grouped_kmeans: x_offsets and centroid_offsets must have the same length");
  const int64_t n = x.size(0), d = x.size(1), k = centroids.size(0);
  at::Tensor xo = x_offsets.contiguous(), co = centroid_offsets.contiguous();
  check_offsets(xo, "x_offsets", n);
  check_offsets(co, "centroid_offsets", k);
  const int64_t groups = xo.size(0) - 1;
  for (int64_t g = 0; g < groups; ++g)
    TORCH_CHECK(xo.data_ptr<int64_t>()[g + 1] == xo.data_ptr<int64_t>()[g] ||
                    co.data_ptr<int64_t>()[g + 1] > co.data_ptr<int64_t>()[g],
                "grouped_kmeans: group ", g, " has rows but no centroid");
  at::Tensor xf = x.to(at::kFloat).contiguous();
  // The output centroids start as a float32 copy of the input ones (never aliasing them).
  at::Tensor cf = centroids.to(at::kFloat, /*non_blocking=*/false, /*copy=*/true).contiguous();
  at::Tensor assignments = at::empty({n}, x.options().dtype(at::kLong));
  onerec::grouped_kmeans_cpu(xf.data_ptr<float>(), d, xo.data_ptr<int64_t>(),
                             co.data_ptr<int64_t>(), groups, iters, cf.data_ptr<float>(),
                             assignments.data_ptr<int64_t>(), at::get_num_threads());
  return {assignments, cf};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(onerec_C, m) {
  m.def("kmeans_step(Tensor x, Tensor centroids) -> (Tensor assignments, Tensor sums, "
        "Tensor counts, Tensor inertia)");
  m.def("grouped_kmeans(Tensor x, Tensor centroids, Tensor x_offsets, Tensor centroid_offsets, "
        "int iters) -> (Tensor assignments, Tensor centroids_out)");
}

TORCH_LIBRARY_IMPL(onerec_C, CPU, m) {
  m.impl("kmeans_step", &kmeans_step_cpu);
  m.impl("grouped_kmeans", &grouped_kmeans_cpu);
}
