// A persistent pool for ConvPlan::Run: threads are started once per delegate, not per invoke
// (starting threads cost more than a small layer's whole run), and spin briefly between
// passes before sleeping.
#ifndef TFLITE_OPS_KERNELS_THREAD_POOL_H_
#define TFLITE_OPS_KERNELS_THREAD_POOL_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "tflite_ops/kernels/conv_plan.h"

namespace hybrid_sparse {

class ThreadPool : public Parallel {
 public:
  // `threads` counts the caller, which always takes part: threads - 1 are started.
  explicit ThreadPool(int threads);
  ~ThreadPool() override;
  int threads() const { return static_cast<int>(workers_.size()) + 1; }

  // Workers stop spinning and sleep until the next For. Called after each layer: the next
  // node is often the stock interpreter's (XNNPACK, with its own spinning pool), and two
  // pools spinning on the same cores slow both (benchmarks/results/codesign.md, threads).
  void Rest();

  // Not reentrant: one For at a time (the interpreter runs one node at a time).
  void For(int num_tasks, int max_workers,
           const std::function<void(int task, int worker)>& fn) override;

 private:
  void WorkerLoop(int id);
  void Drain(int worker);

  std::vector<std::thread> workers_;
  std::mutex mu_;  // guards the fields of a For against workers going to sleep
  std::condition_variable start_;
  std::atomic<uint64_t> generation_{0};  // one per For
  std::atomic<bool> stop_{false};
  std::atomic<bool> resting_{false};  // set by Rest, cleared by the next For
  int participants_ = 0;          // workers (caller included) of the current For
  bool open_ = false;             // the current For still takes workers (guarded by mu_)
  std::atomic<int> active_{0};    // workers that joined the current For and are draining it
  const std::function<void(int, int)>* fn_ = nullptr;
  // Each participant owns a contiguous range of the tasks, the same from one For to the next
  // (its output stays in its cache, as pthreadpool does), and takes it from the front; one
  // done with its own takes others' from the back. A range handed out by a global counter
  // moved every output line between cores on each run and made two workers slower than one.
  struct alignas(64) Range {
    int begin = 0, end = 0;
    std::atomic<int> left{0};   // tasks not yet claimed: claiming one decrements it
    std::atomic<int> front{0};  // claimed by the owner
    std::atomic<int> back{0};   // claimed by others
  };
  std::vector<Range> ranges_;   // one per thread, caller included
  static bool Claim(Range& r, bool owner, int* task);
};

// Chooses, per layer, between one worker and `most` by timing both where the layer runs:
// whether a second worker pays depends on what else is on the cores (the interpreter's own
// pool, spinning between its nodes, takes the core our worker would wake on), which no
// single-layer measurement sees. The first 2 * kTrials runs alternate; then the faster stays
// for kRunsPerDecision runs, after which both are timed again: what else runs on the cores
// changes over a process's life, and one unlucky trial on a noisy machine must not last.
class WorkerChoice {
 public:
  static constexpr int kTrials = 5;
  static constexpr int kRunsPerDecision = 1000;
  // Workers for the next run, given how many could help (1: no choice to make).
  int Next(int most) const;
  // The wall time of the run that used `workers` (as returned by Next).
  void Report(int workers, double seconds);
  bool decided() const { return decided_; }

 private:
  int trials_[2] = {0, 0};       // runs with one worker, with more
  double best_[2] = {0.0, 0.0};  // their fastest, valid once trials_ > 0
  bool decided_ = false;
  bool more_ = false;            // the decision: more than one worker pays
  int since_decision_ = 0;
};

}  // namespace hybrid_sparse

#endif  // TFLITE_OPS_KERNELS_THREAD_POOL_H_
