#include "parallel.h"

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <vector>

namespace onerec {

namespace {

thread_local bool t_inside_task = false;

// Workers wait for a new generation, then take task indices from a shared counter until none
// is left. The caller takes indices too, then waits until no worker is inside the job, so the
// job (a reference to the caller's std::function) outlives every use. The pool is never
// destroyed: workers sleep until the process exits (joining them from a static destructor at
// interpreter exit is a known deadlock hazard).
class Pool {
 public:
  void run(int64_t num_tasks, int num_threads, const std::function<void(int64_t)>& task) {
    std::lock_guard<std::mutex> one_job(run_m_);
    {
      std::lock_guard<std::mutex> lk(m_);
      while (static_cast<int>(workers_.size()) < num_threads - 1)
        workers_.emplace_back([this, g = gen_] { work(g); });
      seats_ = num_threads - 1;  // workers beyond the requested thread count stay asleep
      job_ = &task;
      num_tasks_ = num_tasks;
      next_.store(0);
      ++gen_;
    }
    wake_.notify_all();
    take_tasks(task, num_tasks);
    std::unique_lock<std::mutex> lk(m_);
    idle_.wait(lk, [this] { return active_ == 0; });
    job_ = nullptr;
  }

 private:
  void take_tasks(const std::function<void(int64_t)>& task, int64_t num_tasks) {
    t_inside_task = true;
    for (int64_t c; (c = next_.fetch_add(1)) < num_tasks;) task(c);
    t_inside_task = false;
  }

  void work(uint64_t seen) {
    std::unique_lock<std::mutex> lk(m_);
    for (;;) {
      wake_.wait(lk, [&] { return gen_ != seen; });
      seen = gen_;
      const std::function<void(int64_t)>* job = job_;
      const int64_t num_tasks = num_tasks_;
      // Woke after that job had finished, or it already has all the threads it asked for.
      if (job == nullptr || seats_ == 0) continue;
      --seats_;
      ++active_;
      lk.unlock();
      take_tasks(*job, num_tasks);
      lk.lock();
      if (--active_ == 0) idle_.notify_all();
    }
  }

  std::mutex run_m_;  // one job at a time
  std::mutex m_;
  std::condition_variable wake_, idle_;
  std::vector<std::thread> workers_;
  const std::function<void(int64_t)>* job_ = nullptr;
  int64_t num_tasks_ = 0;
  std::atomic<int64_t> next_{0};
  int active_ = 0;
  int seats_ = 0;
  uint64_t gen_ = 0;
};

Pool& pool() {
  static Pool* p = new Pool;
  return *p;
}

}  // namespace

void run_on_pool(int64_t num_tasks, int num_threads, const std::function<void(int64_t)>& task) {
  if (num_tasks <= 0) return;
  if (num_tasks == 1 || num_threads <= 1 || t_inside_task) {
    for (int64_t c = 0; c < num_tasks; ++c) task(c);
    return;
  }
  pool().run(num_tasks, num_threads, task);
}

}  // namespace onerec
