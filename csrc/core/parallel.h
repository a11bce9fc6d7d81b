// Minimal fork-join parallel_for over an index range, std::thread only, so the C++ core builds
// and runs without torch (CMake/CTest) and with it (the torch extension passes
// at::get_num_threads() so torch.set_num_threads is honoured).
#pragma once
#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

namespace onerec {

inline int default_num_threads() {
  unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

// Calls fn(begin, end) on disjoint chunks of [0, n), each at least `grain` long.
template <typename Fn>
void parallel_for(int64_t n, int64_t grain, int num_threads, Fn&& fn) {
  if (n <= 0) return;
  if (num_threads <= 0) num_threads = default_num_threads();
  grain = std::max<int64_t>(grain, 1);
  int64_t chunks = std::min<int64_t>(num_threads, (n + grain - 1) / grain);
  if (chunks <= 1) {
    fn(int64_t{0}, n);
    return;
  }
  int64_t step = (n + chunks - 1) / chunks;
  std::vector<std::thread> workers;
  workers.reserve(static_cast<size_t>(chunks - 1));
  for (int64_t c = 1; c < chunks; ++c) {
    int64_t b = c * step, e = std::min(n, b + step);
    if (b < e) workers.emplace_back([&fn, b, e] { fn(b, e); });
  }
  fn(int64_t{0}, std::min(n, step));
  for (auto& w : workers) w.join();
}

}  // namespace onerec
