// One Lloyd step of k-means (assignment + per-centroid sums and counts), plain C++ on float32.
#pragma once
#include <cstdint>

namespace onerec {

// x: (n, d) row-major; centroids: (k, d) row-major.
// Writes assignments (n) = argmin_j ||x_i - centroids[j]||^2 (the nearest_codes rule of
// rq_assign.h: ties to the lowest index, an all-NaN row gets 0), sums (k, d) = the sum of the
// rows assigned to each centroid, counts (k) = how many rows each centroid got, and *inertia =
// the sum over rows of the exact squared distance ||x_i - centroids[a_i]||^2.
//
// Each worker owns a contiguous slice of rows and a private (k, d) double accumulator that it
// fills in the same pass as the assignment (the row block is still in cache); the partials are
// then added in worker order, so for a given num_threads the result is deterministic. The number
// of workers is capped so the partial buffers stay under ~256 MiB. num_threads <= 0: all
// hardware threads. n == 0 is allowed (zero sums and counts).
void kmeans_step_cpu(const float* x, const float* centroids, int64_t n, int64_t d, int64_t k,
                     int64_t* assignments, float* sums, int64_t* counts, double* inertia,
                     int num_threads);

}  // namespace onerec
