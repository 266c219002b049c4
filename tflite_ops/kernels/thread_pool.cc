#include "tflite_ops/kernels/thread_pool.h"

#include <algorithm>
#include <chrono>

namespace hybrid_sparse {
namespace {

// Workers spin this long for the next For before sleeping: the passes of one layer follow
// each other within microseconds, while a condition-variable wake-up costs tens of
// microseconds on a VM. Between layers they rest instead (Rest).
constexpr auto kSpin = std::chrono::microseconds(200);

inline void Relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

}  // namespace

ThreadPool::ThreadPool(int threads) : ranges_(std::max(threads, 1)) {
  for (int id = 1; id < threads; ++id) workers_.emplace_back([this, id] { WorkerLoop(id); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_.store(true);
  }
  start_.notify_all();
  for (auto& w : workers_) w.join();
}

bool ThreadPool::Claim(Range& r, bool owner, int* task) {
  if (r.left.load(std::memory_order_relaxed) <= 0) return false;
  if (r.left.fetch_sub(1, std::memory_order_acq_rel) <= 0) {
    r.left.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  // At most `end - begin` claims succeed, so front and back never cross.
  *task = owner ? r.begin + r.front.fetch_add(1, std::memory_order_relaxed)
                : r.end - 1 - r.back.fetch_add(1, std::memory_order_relaxed);
  return true;
}

void ThreadPool::Drain(int worker) {
  int task;
  while (Claim(ranges_[worker], true, &task)) (*fn_)(task, worker);
  for (int i = 1; i < participants_; ++i) {
    Range& other = ranges_[(worker + i) % participants_];
    while (Claim(other, false, &task)) (*fn_)(task, worker);
  }
}

void ThreadPool::WorkerLoop(int id) {
  uint64_t seen = 0;
  for (;;) {
    // Spin first, then sleep until the generation moves on.
    const auto deadline = std::chrono::steady_clock::now() + kSpin;
    while (generation_.load(std::memory_order_acquire) == seen && !stop_.load() &&
           !resting_.load(std::memory_order_relaxed) &&
           std::chrono::steady_clock::now() < deadline) {
      for (int i = 0; i < 64; ++i) Relax();
    }
    bool participate;
    {
      std::unique_lock<std::mutex> lock(mu_);
      start_.wait(lock, [&] { return stop_.load() || generation_.load() != seen; });
      if (stop_.load()) return;
      seen = generation_.load();
      // Read with the generation: a worker left out of one For may only look after the next
      // has begun, and must not join that one and then again under its own generation. A
      // worker that wakes after the caller has finished every task stays out (open_).
      participate = open_ && id < participants_;
      if (participate) active_.fetch_add(1, std::memory_order_relaxed);
    }
    if (participate) {
      Drain(id);
      active_.fetch_sub(1, std::memory_order_acq_rel);
    }
  }
}

void ThreadPool::Rest() { resting_.store(true, std::memory_order_relaxed); }

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
    for (int i = 0; i < participants; ++i) {
      Range& r = ranges_[i];
      r.begin = static_cast<int>(static_cast<int64_t>(num_tasks) * i / participants);
      r.end = static_cast<int>(static_cast<int64_t>(num_tasks) * (i + 1) / participants);
      r.front.store(0, std::memory_order_relaxed);
      r.back.store(0, std::memory_order_relaxed);
      r.left.store(r.end - r.begin, std::memory_order_relaxed);
    }
    participants_ = participants;
    resting_.store(false, std::memory_order_relaxed);
    open_ = true;
    generation_.fetch_add(1, std::memory_order_release);
  }
  start_.notify_all();
  Drain(0);
  // Every task is taken: close the For, so that a worker still waking up (a sleeping one
  // takes tens of microseconds) does not make the caller wait for it, then wait only for
  // those that joined, which are finishing their last task.
  {
    std::lock_guard<std::mutex> lock(mu_);
    open_ = false;
  }
  while (active_.load(std::memory_order_acquire) != 0) Relax();
}

int WorkerChoice::Next(int most) const {
  if (most <= 1) return 1;
  if (decided_) return more_ ? most : 1;
  return trials_[0] <= trials_[1] ? 1 : most;
}

void WorkerChoice::Report(int workers, double seconds) {
  if (decided_) {
    if (++since_decision_ >= kRunsPerDecision) *this = WorkerChoice();
    return;
  }
  const int i = workers > 1 ? 1 : 0;
  best_[i] = trials_[i] == 0 ? seconds : std::min(best_[i], seconds);
  // Capped: a layer too small for a second worker reports one worker forever.
  if (trials_[i] < kTrials) ++trials_[i];
  if (trials_[0] >= kTrials && trials_[1] >= kTrials) {
    decided_ = true;
    more_ = best_[1] < best_[0];
  }
}

}  // namespace hybrid_sparse
