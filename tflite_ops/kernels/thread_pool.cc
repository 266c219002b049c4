#include "tflite_ops/kernels/thread_pool.h"

#include <algorithm>

namespace hybrid_sparse {

ThreadPool::ThreadPool(int threads) {
  for (int id = 1; id < threads; ++id) workers_.emplace_back([this, id] { WorkerLoop(id); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  start_.notify_all();
  for (auto& w : workers_) w.join();
}

void ThreadPool::Drain(int worker) {
  for (int t = next_.fetch_add(1); t < num_tasks_; t = next_.fetch_add(1)) (*fn_)(t, worker);
}

void ThreadPool::WorkerLoop(int id) {
  uint64_t seen = 0;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      start_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      if (id >= participants_) continue;
    }
    Drain(id);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (--pending_ == 0) done_.notify_one();
    }
  }
}

void ThreadPool::For(int num_tasks, int max_workers,
                     const std::function<void(int, int)>& fn) {
  const int participants = std::min({max_workers, threads(), num_tasks});
  if (participants <= 1) {
    for (int t = 0; t < num_tasks; ++t) fn(t, 0);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    fn_ = &fn;
    num_tasks_ = num_tasks;
    next_.store(0);
    participants_ = participants;
    pending_ = participants - 1;
    ++generation_;
  }
  start_.notify_all();
  Drain(0);
  std::unique_lock<std::mutex> lock(mu_);
  done_.wait(lock, [&] { return pending_ == 0; });
}

}  // namespace hybrid_sparse
