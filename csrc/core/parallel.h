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

// Runs task(c) for every c in [0, num_tasks) on the calling thread plus up to num_threads - 1
// pool workers, which claim tasks from a shared counter, and returns when all are done. A worker
// that has not woken up by then is not waited for (on a shared machine it may wait a scheduler
// slice for a core); the caller simply runs more of the tasks. Calls from several threads are
// serialized; a call from inside a task runs its tasks inline (no nested parallelism).
void run_on_pool(int64_t num_tasks, int num_threads, const std::function<void(int64_t)>& task);

// Calls fn(begin, end) on disjoint chunks of [0, n), each at least `grain` long, on at most
// num_threads threads (num_threads <= 0: all hardware threads). Up to 4 chunks per thread,
// claimed dynamically, so a thread the OS holds back costs at most a chunk, not half the work.
template <typename Fn>
void parallel_for(int64_t n, int64_t grain, int num_threads, Fn&& fn) {
  if (n <= 0) return;
  if (num_threads <= 0) num_threads = default_num_threads();
  grain = std::max<int64_t>(grain, 1);
  const int64_t max_chunks = (n + grain - 1) / grain;
  const int64_t threads = std::min<int64_t>(num_threads, max_chunks);
  if (threads <= 1) {
    fn(int64_t{0}, n);
    return;
  }
  const int64_t step = (n + std::min(max_chunks, threads * 4) - 1) / std::min(max_chunks, threads * 4);
  const int64_t chunks = (n + step - 1) / step;
  run_on_pool(chunks, static_cast<int>(threads), [&](int64_t c) {
    fn(c * step, std::min(n, (c + 1) * step));
  });
}

}  // namespace onerec
