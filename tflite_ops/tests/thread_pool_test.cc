// The pool runs every task exactly once per For, with worker ids in range, For after For (and
// after Rest), and the kernels give the same result through it as serially.
#include "tflite_ops/kernels/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "tflite_ops/kernels/conv_plan.h"

namespace hybrid_sparse {
namespace {

TEST(ThreadPool, RunsEveryTaskOnceWithWorkerIdsInRange) {
  for (int threads : {1, 2, 3, 4}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.threads(), threads);
    // Many short Fors whose worker counts change from one to the next: a worker left out of
    // one For must not be counted twice in the next (a race that hung the caller).
    for (int round = 0; round < 5000; ++round) {
      const int tasks = round % 37;
      const int max_workers = 1 + round % 5;
      std::vector<std::atomic<int>> runs(tasks);
      std::atomic<int> bad_worker{0};
      pool.For(tasks, max_workers, [&](int task, int worker) {
        runs[task].fetch_add(1);
        if (worker < 0 || worker >= max_workers || worker >= threads) bad_worker.fetch_add(1);
      });
      for (int t = 0; t < tasks; ++t) ASSERT_EQ(runs[t].load(), 1) << "task " << t;
      ASSERT_EQ(bad_worker.load(), 0);
      // Resting workers (as after every layer) must still wake for the next For.
      if (round % 7 == 0) pool.Rest();
    }
  }
}

TEST(WorkerChoice, AlternatesThenKeepsTheFaster) {
  for (const bool more_is_faster : {true, false}) {
    WorkerChoice choice;
    std::vector<int> used;
    for (int run = 0; run < 2 * WorkerChoice::kTrials; ++run) {
      EXPECT_FALSE(choice.decided());
      const int w = choice.Next(4);
      used.push_back(w);
      // The first run of each is slow (cold caches): only the fastest counts.
      const double t = (w > 1) == more_is_faster ? 1.0 : 1.5;
      choice.Report(w, run < 2 ? 10.0 : t);
    }
    EXPECT_TRUE(choice.decided());
    EXPECT_EQ(std::count(used.begin(), used.end(), 1), WorkerChoice::kTrials);
    EXPECT_EQ(std::count(used.begin(), used.end(), 4), WorkerChoice::kTrials);
    EXPECT_EQ(choice.Next(4), more_is_faster ? 4 : 1);
    EXPECT_EQ(choice.Next(1), 1);  // nothing to choose
  }
}

TEST(WorkerChoice, TimesBothAgainAfterAWhile) {
  WorkerChoice choice;
  for (int run = 0; run < 2 * WorkerChoice::kTrials; ++run) {
    const int w = choice.Next(2);
    choice.Report(w, w > 1 ? 1.0 : 2.0);
  }
  ASSERT_TRUE(choice.decided());
  for (int run = 0; run < WorkerChoice::kRunsPerDecision; ++run) {
    EXPECT_EQ(choice.Next(2), 2);
    choice.Report(2, 1.0);
  }
  // The cores got busier: a second worker now costs more than it brings.
  EXPECT_FALSE(choice.decided());
  for (int run = 0; run < 2 * WorkerChoice::kTrials; ++run) {
    const int w = choice.Next(2);
    choice.Report(w, w > 1 ? 3.0 : 2.0);
  }
  EXPECT_TRUE(choice.decided());
  EXPECT_EQ(choice.Next(2), 1);
}

struct PlanCase {
  int batch, h, w, in_c, out_c, k, stride, block;
};

// Several workers split a layer's tiles and, on small images, its output channels too: every
// split must give exactly the serial result (same sums in the same order per output).
TEST(ThreadPool, ConvPlanGivesTheSerialResult) {
  const PlanCase cases[] = {
      {2, 23, 19, 12, 20, 3, 2, 1},  // many tiles
      {1, 4, 4, 32, 40, 3, 1, 4},    // one tile: channel chunks, a partial last block
      {2, 7, 7, 24, 72, 1, 1, 1},    // pointwise, one tile per image
      {1, 8, 8, 16, 33, 3, 1, 1},    // channels not a multiple of a cache line
  };
  for (const PlanCase& c : cases) {
    ConvShape s;
    s.batch = c.batch, s.in_h = c.h, s.in_w = c.w, s.in_c = c.in_c, s.out_c = c.out_c;
    s.kernel_h = c.k, s.kernel_w = c.k, s.stride_h = c.stride, s.stride_w = 1;
    ASSERT_TRUE(ComputeConvShape(Padding::kSame, &s));
    std::mt19937 rng(3);
    std::normal_distribution<float> normal;
    const int cols = c.k * c.k * s.in_c;
    const int blocks = (s.out_c + c.block - 1) / c.block;
    std::vector<int32_t> col_ptr{0};
    std::vector<int16_t> row_block;
    std::vector<float> values;
    for (int k = 0; k < cols; ++k) {
      for (int b = 0; b < blocks; ++b) {
        if (rng() % 4 != 0) continue;
        row_block.push_back(static_cast<int16_t>(b));
        for (int r = 0; r < c.block; ++r) values.push_back(normal(rng));
      }
      col_ptr.push_back(static_cast<int32_t>(row_block.size()));
    }
    SparseFilter f;
    f.out_c = s.out_c, f.num_cols = cols, f.block_size = c.block, f.num_blocks = blocks;
    f.num_nonzero_blocks = static_cast<int>(row_block.size());
    f.col_ptr = col_ptr.data(), f.row_block = row_block.data(), f.values = values.data();
    std::vector<float> bias(s.out_c);
    for (float& v : bias) v = normal(rng);
    std::vector<float> input(static_cast<size_t>(s.batch) * s.in_h * s.in_w * s.in_c);
    for (float& v : input) v = normal(rng);
    const size_t out_size = static_cast<size_t>(s.batch) * s.out_h * s.out_w * s.out_c;
    int count = 0;
    const KernelVariant* variants = AvailableKernels(&count);
    for (int v = 0; v < count; ++v) {
      for (int threads : {2, 3}) {
        ConvPlan plan;
        ASSERT_EQ(plan.Build(s, f, bias.data(), nullptr, Activation::kRelu, variants[v],
                             threads), "");
        std::vector<float> serial(out_size), pooled(out_size, -1.0f);
        SerialParallel one;
        plan.Run(input.data(), serial.data(), &one, 1);
        ThreadPool pool(threads);
        for (int repeat = 0; repeat < 3; ++repeat) {
          plan.Run(input.data(), pooled.data(), &pool, threads);
          EXPECT_EQ(serial, pooled) << variants[v].name << " " << s.in_h << "x" << s.in_w
                                    << " " << s.in_c << "->" << s.out_c << " block "
                                    << c.block << ", " << threads << " threads";
        }
      }
    }
  }
}

}  // namespace
}  // namespace hybrid_sparse
