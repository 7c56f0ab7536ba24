// The one threading helper of the CPU kernels: how much work a task must hold before a second
// thread is worth its fork, and the fixed split of a reduction over the batch that keeps sums
// bitwise the same for any thread count. Every at::parallel_for under csrc/cpu takes its grain
// from grain() with one of the task sizes below (1 where each item is already big).
#pragma once
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>

namespace lenet_ext::cpu {

// Work a task holds, by kind of kernel (the measurements: docs/performance.md, threads):
// linear's dot-product tiles: from ~2M multiply-adds a split wins, below it two threads run no
// faster than one.
constexpr int64_t kDotTask = int64_t(1) << 20;
// GEMM (gemm.h) blocks, each packing its own operands: no shared pack ahead of the products, so
// fc2 at batch 64 (645K multiply-adds) already gains from the second thread.
constexpr int64_t kGemmTask = int64_t(1) << 18;
// Convolution kernels (multiply-adds; for grad_bias, additions).
constexpr int64_t kConvTask = int64_t(1) << 16;
// Elements of a streaming elementwise pass: stock's TensorIterator grain, so we fork where it does.
constexpr int64_t kStreamTask = int64_t(1) << 15;
// Input elements of a pooling pass.
constexpr int64_t kPoolTask = int64_t(1) << 14;

// The per-thread working buffers, one a use, kept between calls (fresh pages would cost more than
// a small product) and aligned for vector loads: the GEMM's packed panels, conv2d's columns and
// its block of grad_output or output; a bfloat16/float16 op's operands and results widened to
// float32 a piece at a time; Winograd's transformed weight, tiles and products, which the calling
// thread holds and its workers share, and its grad_weight's partial sums; a convolution's weight
// packed once for all its chunks (the calling thread's too).
enum class Scratch {
  kPackedA, kPackedB, kColumns, kBlock, kWidened, kWidenedResult,
  kWinogradWeight, kWinogradTiles, kWinogradProducts, kWinogradTaps, kWinogradPartials,
  kPrepackedWeight, kCount
};

// This thread's `which` buffer, grown to at least `count` elements; its contents are not kept.
template <typename T>
T* scratch(Scratch which, int64_t count) {
  struct Buffer {
    T* data = nullptr;
    int64_t size = 0;
    ~Buffer() { std::free(data); }
  };
  thread_local Buffer buffers[static_cast<int>(Scratch::kCount)];
  Buffer& buffer = buffers[static_cast<int>(which)];
  if (buffer.size < count) {
    std::free(buffer.data);
    const size_t bytes = (count * sizeof(T) + 63) / 64 * 64;
    buffer.data = static_cast<T*>(std::aligned_alloc(64, bytes));
    buffer.size = buffer.data ? count : 0;
    TORCH_CHECK(buffer.data != nullptr, "lenet_ext: out of memory for a ", bytes,
                "-byte working buffer");
  }
  return buffer.data;
}

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
