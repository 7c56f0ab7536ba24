// The one threading helper of the CPU kernels: how much work a task must hold before a second
// thread is worth its fork, and the fixed split of a reduction over the batch that keeps sums
// bitwise the same for any thread count. Every at::parallel_for under csrc/cpu takes its grain
// from grain() with one of the task sizes below (1 where each item is already big).
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

namespace lenet_ext::cpu {

// Work a task holds, by kind of kernel (the measurements: docs/performance.md, threads):
// GEMM tiles: from ~2M multiply-adds a split wins, below it two threads run no faster than one.
constexpr int64_t kGemmTask = int64_t(1) << 20;
// GEMM (gemm.h) blocks, each packing its own operands: no shared pack ahead of the products, so
// fc2 at batch 64 (645K multiply-adds) already gains from the second thread.
constexpr int64_t kPackedGemmTask = int64_t(1) << 18;
// Convolution kernels (multiply-adds; for grad_bias, additions).
constexpr int64_t kConvTask = int64_t(1) << 16;
// Elements of a streaming elementwise pass: stock's TensorIterator grain, so we fork where it does.
constexpr int64_t kStreamTask = int64_t(1) << 15;
// Input elements of a pooling pass.
constexpr int64_t kPoolTask = int64_t(1) << 14;

// Items per task so that a task holds at least task_work when each item costs item_work.
inline int64_t grain(int64_t item_work, int64_t task_work) {
  return std::max<int64_t>(1, task_work / std::max<int64_t>(1, item_work));
}

// A reduction over `items` (images, or blocks of them) is split into a number of contiguous parts
// fixed by `items` alone, never by the thread count: each part sums its items in order into its
// own partial, and the partials are added in part order (sum_parts).
struct BatchParts {
  static constexpr int64_t kMostParts = 16;
  int64_t items, count;

  explicit BatchParts(int64_t items) : items(items), count(std::min(items, kMostParts)) {}
  int64_t begin(int64_t part) const { return part * items / count; }
  int64_t end(int64_t part) const { return (part + 1) * items / count; }
  int64_t most_items() const { return count == 0 ? 0 : (items + count - 1) / count; }
};

// out[k] = partials[part * numel + k] added in part order, k < numel (zero for no parts); out may
// be the first part.
template <typename scalar_t>
void sum_parts(const scalar_t* partials, int64_t parts, int64_t numel, scalar_t* out) {
  if (parts == 0) std::fill_n(out, numel, scalar_t(0));
  else if (out != partials) std::copy_n(partials, numel, out);
  for (int64_t part = 1; part < parts; ++part)
    for (int64_t k = 0; k < numel; ++k) out[k] += partials[part * numel + k];
}

}  // namespace lenet_ext::cpu
