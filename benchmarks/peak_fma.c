// The machine's fp32 FMA ceiling, with 1 and 2 threads: each thread runs 24 independent chains of
// 512-bit FMAs (enough to cover the FMA latency on every pipe), nothing else, no memory traffic.
// It answers one question the kernels' efficiencies depend on: do the two threads share one core's
// FMA units, or does each have its own? (On the CI box: 114 vs 228 GFLOP/s, so the latter.)
// Where the build has AVX-512 BF16 it also times vdpbf16ps (32 bfloat16 products summed into 16
// float lanes an instruction), on its own lines: whether bfloat16 products would outrun float32
// FMAs here, or only halve the bytes.
//
//   gcc -O2 -march=native -fopenmp benchmarks/peak_fma.c -o /tmp/peak_fma && /tmp/peak_fma
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <time.h>

enum { kChains = 24 };

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(void) {
  const long fmas_per_thread = 200000000 / kChains * kChains;
  for (int threads = 1; threads <= 2; ++threads) {
    double best = 0;
    for (int run = 0; run < 5; ++run) {
      float sink = 0;
      const double start = now();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
      {
        const __m512 x = _mm512_set1_ps(1.0000001f), y = _mm512_set1_ps(0.9999999f);
        __m512 acc[kChains];
        for (int i = 0; i < kChains; ++i) acc[i] = _mm512_set1_ps((float)i);
        for (long step = 0; step < fmas_per_thread / kChains; ++step)
#pragma GCC unroll 24
          for (int i = 0; i < kChains; ++i) acc[i] = _mm512_fmadd_ps(acc[i], x, y);
        __m512 sum = acc[0];
        for (int i = 1; i < kChains; ++i) sum = _mm512_add_ps(sum, acc[i]);
        sink += _mm512_reduce_add_ps(sum);  // keeps the chains alive
      }
      const double seconds = now() - start;
      const double gflops = (double)fmas_per_thread * threads * 16 * 2 / seconds / 1e9;
      if (gflops > best) best = gflops;
      if (sink == 1234.5f) printf(" ");
    }
    printf("%d thread%s: %.1f GFLOP/s fp32 (best of 5)\n", threads, threads > 1 ? "s" : "", best);
  }
#if defined(__AVX512BF16__)
  for (int threads = 1; threads <= 2; ++threads) {
    double best = 0;
    for (int run = 0; run < 5; ++run) {
      float sink = 0;
      const double start = now();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
      {
        const __m512bh x = (__m512bh)_mm512_set1_epi16(0x3F80), y = (__m512bh)_mm512_set1_epi16(0x3F81);
        __m512 acc[kChains];
        for (int i = 0; i < kChains; ++i) acc[i] = _mm512_set1_ps((float)i);
        for (long step = 0; step < fmas_per_thread / kChains; ++step)
#pragma GCC unroll 24
          for (int i = 0; i < kChains; ++i) acc[i] = _mm512_dpbf16_ps(acc[i], x, y);
        __m512 sum = acc[0];
        for (int i = 1; i < kChains; ++i) sum = _mm512_add_ps(sum, acc[i]);
        sink += _mm512_reduce_add_ps(sum);
      }
      const double seconds = now() - start;
      const double gflops = (double)fmas_per_thread * threads * 32 * 2 / seconds / 1e9;
      if (gflops > best) best = gflops;
      if (sink == 1234.5f) printf(" ");
    }
    printf("bf16 dot (vdpbf16ps), %d thread%s: %.1f GFLOP/s (best of 5)\n", threads,
           threads > 1 ? "s" : "", best);
  }
#endif
  return 0;
}
