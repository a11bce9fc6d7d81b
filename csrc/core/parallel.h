// parallel_for over an index range on a persistent pool of std::threads, so the C++ core builds
// and runs without torch (CMake/CTest) and with it (the torch extension passes
// at::get_num_threads() so torch.set_num_threads is honoured).
//
// Why a pool: the first version started and joined fresh threads on every call, and a beam
// search step (a few ms, many calls per search) then paid thread start-up on each one; with a
// pool the workers sleep on a condition variable between calls.
#pragma once
#include <algorithm>
#include <cstdint>
#include <functional>
#include <thread>

namespace onerec {

inline int default_num_threads() {
  unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

// Runs task(c) for every c in [0, num_tasks) on the calling thread plus up to
// num_tasks - 1 pool workers, and returns when all are done. Calls from several threads are
// serialized; a call from inside a task runs its tasks inline (no nested parallelism).
void run_on_pool(int64_t num_tasks, const std::function<void(int64_t)>& task);

// Replaces the pool above for every later parallel_for (nullptr: back to it). The torch
// extension installs torch's intra-op pool (at::parallel_for): a second set of threads next to
// torch's OpenMP workers, which spin for a while after each torch op, would fight them for the
// same cores (measured: 2 threads slower than 1 for the beam search on the 2-core dev machine).
using PoolRunner = void (*)(int64_t num_tasks, const std::function<void(int64_t)>& task);
void set_pool_runner(PoolRunner runner);

// Calls fn(begin, end) on disjoint chunks of [0, n), each at least `grain` long, on at most
// num_threads threads (num_threads <= 0: all hardware threads).
template <typename Fn>
void parallel_for(int64_t n, int64_t grain, int num_threads, Fn&& fn) {
  if (n <= 0) return;
  if (num_threads <= 0) num_threads = default_num_threads();
  grain = std::max<int64_t>(grain, 1);
  const int64_t chunks = std::min<int64_t>(num_threads, (n + grain - 1) / grain);
  if (chunks <= 1) {
    fn(int64_t{0}, n);
    return;
  }
  const int64_t step = (n + chunks - 1) / chunks;
  run_on_pool(chunks, [&](int64_t c) {
    const int64_t b = c * step, e = std::min(n, b + step);
    if (b < e) fn(b, e);
  });
}

}  // namespace onerec
