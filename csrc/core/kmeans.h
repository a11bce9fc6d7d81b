// k-means on float32, plain C++: one fused Lloyd step (assignment + per-centroid sums and
// counts), and whole runs of Lloyd steps on many small independent problems at once.
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

// Lanes of the squared-distance sum of grouped_kmeans_cpu: ||a - b||^2 over d is summed as 8
// running fp32 sums (lane l takes the coordinates t = l mod 8, in order), then
// ((s0 + s4) + (s2 + s6)) + ((s1 + s5) + (s3 + s7)) -- one fixed order on every instruction set,
// which the PyTorch reference repeats, so both give bit-identical distances.
constexpr int64_t kDistLanes = 8;

// k-means of num_groups independent problems: group g's rows x[x_offsets[g] : x_offsets[g+1]]
// against its own centroids[c_offsets[g] : c_offsets[g+1]] (k_g >= 1 wherever the group has
// rows; offsets start at 0 and do not decrease). x: (n, d) row-major; centroids: (K, d)
// row-major, the initial centroids, overwritten with the final ones.
//
// Per group, `iters` (>= 1) Lloyd steps: a_i = argmin_j ||x_i - c_j||^2 (exact differences in
// fp32, summed as kDistLanes lanes; ties and NaN: the first strictly smaller distance wins, so
// ties go to the lower j and a row with no finite distance gets j = 0), then every centroid
// that got rows becomes their mean (summed in double, rounded once), the others stay. A group
// stops early once a step repeats its previous assignments: every later step would repeat them
// too, so the result is that of all `iters` steps. On return assignments (n) hold the last
// step's a_i as global centroid indices (c_offsets[g] + j) and centroids the means of those
// assignments (the unassigned ones unchanged).
//
// Groups are spread over num_threads threads (<= 0: all hardware threads); each group is
// computed by one thread in a fixed order, so the result does not depend on num_threads.
void grouped_kmeans_cpu(const float* x, int64_t d, const int64_t* x_offsets,
                        const int64_t* c_offsets, int64_t num_groups, int64_t iters,
                        float* centroids, int64_t* assignments, int num_threads);

}  // namespace onerec
