// The machine's fp32 FMA ceiling, with 1 and 2 threads: each thread runs 24 independent chains of
// 512-bit FMAs (enough to cover the FMA latency on every pipe), nothing else, no memory traffic.
// It answers one question the kernels' efficiencies depend on: do the two threads share one core's
// FMA units, or does each have its own? (On the CI box: 114 vs 228 GFLOP/s, so the latter.)
// Where the build has AVX-512 BF16 it also times vdpbf16ps (32 bfloat16 products summed into 16
// float lanes an instruction), on its own lines: whether bfloat16 products would outrun float32
// FMAs here, or only halve the bytes.
//
//   gcc -O2 -march=native -fopenmp benchmarks/peak_fma.c -o /tmp/peak_fma && /tmp/peak_fma [THREADS]
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

enum { kChains = 24 };

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

// The best of 5 runs of `threads` threads, each running kChains independent chains: fp32 FMAs, or
// with `bf16` vdpbf16ps. Always inlined, so each call's `bf16` is a constant and the loop has no
// branch.
static inline __attribute__((always_inline)) double best_gflops(int threads, int bf16) {
  const long steps_per_thread = 200000000 / kChains;
  double best = 0;
  for (int run = 0; run < 5; ++run) {
    float sink = 0;
    const double start = now();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
    {
      const __m512 x = _mm512_set1_ps(1.0000001f), y = _mm512_set1_ps(0.9999999f);
      __m512 acc[kChains];
      for (int i = 0; i < kChains; ++i) acc[i] = _mm512_set1_ps((float)i);
      for (long step = 0; step < steps_per_thread; ++step)
#pragma GCC unroll 24
        for (int i = 0; i < kChains; ++i) {
#if defined(__AVX512BF16__)
          if (bf16) {
            acc[i] = _mm512_dpbf16_ps(acc[i], (__m512bh)x, (__m512bh)y);
            continue;
          }
#endif
          acc[i] = _mm512_fmadd_ps(acc[i], x, y);
        }
      __m512 sum = acc[0];
      for (int i = 1; i < kChains; ++i) sum = _mm512_add_ps(sum, acc[i]);
      sink += _mm512_reduce_add_ps(sum);  // keeps the chains alive
    }
    const double seconds = now() - start;
    // an FMA instruction: 16 multiply-adds; a vdpbf16ps: 32
    const double gflops = (double)steps_per_thread * kChains * threads * (bf16 ? 32 : 16) * 2 / seconds / 1e9;
    if (gflops > best) best = gflops;
    if (sink == 1234.5f) printf(" ");
  }
  return best;
}

int main(int argc, char** argv) {
  // `peak_fma THREADS`: that thread count's fp32 line alone (~0.2 s), a probe a benchmark runs
  // just before and after one timing, since a shared VM's speed moves from minute to minute
  if (argc > 1) {
    const int threads = atoi(argv[1]);
    if (threads < 1) return fprintf(stderr, "peak_fma: THREADS must be a positive integer, got '%s'\n", argv[1]), 2;
    printf("%d thread%s: %.1f GFLOP/s fp32 (best of 5)\n", threads, threads > 1 ? "s" : "",
           best_gflops(threads, 0));
    return 0;
  }
  for (int threads = 1; threads <= 2; ++threads)
    printf("%d thread%s: %.1f GFLOP/s fp32 (best of 5)\n", threads, threads > 1 ? "s" : "",
           best_gflops(threads, 0));
#if defined(__AVX512BF16__)
  for (int threads = 1; threads <= 2; ++threads)
    printf("bf16 dot (vdpbf16ps), %d thread%s: %.1f GFLOP/s (best of 5)\n", threads,
           threads > 1 ? "s" : "", best_gflops(threads, 1));
#endif
  return 0;
}
