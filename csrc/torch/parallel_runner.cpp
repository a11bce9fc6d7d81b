// Routes the C++ core's parallel_for (csrc/core/parallel.h) through torch's intra-op thread
// pool, so the native ops share torch's workers (and torch.set_num_threads) instead of adding a
// second set of threads that competes with them for the same cores.
#include <ATen/Parallel.h>

#include "../core/parallel.h"

namespace {

void run_on_torch_pool(int64_t num_tasks, const std::function<void(int64_t)>& task) {
  // grain 1: one task per chunk; the core already sized num_tasks to the thread count.
  at::parallel_for(0, num_tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) task(c);
  });
}

const bool installed = [] {
  onerec::set_pool_runner(&run_on_torch_pool);
  return true;
}();

}  // namespace
