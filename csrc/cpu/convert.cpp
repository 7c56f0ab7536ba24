// Conversions between float32 and bfloat16 / float16, as torch makes them: widening is exact,
// narrowing rounds to nearest even. bfloat16 is float32's upper half, so both ways are integer
// operations on the bits (a shift; an add of the rounding bias, NaN to the quiet NaN 0x7FC0 as in
// c10::BFloat16), which vectorise in any build. float16 has its own exponent: the F16C
// instructions (vcvtph2ps, vcvtps2ph: IEEE round to nearest even, subnormals kept) where the CPU
// has them, chosen once at run time, else c10::Half's conversions. Each is one streaming pass:
// 2 bytes read and 4 written an element, or the reverse.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <cstdint>
#include <cstring>

#include "convert.h"
#include "parallel.h"

namespace lenet_ext::cpu {
namespace {

void bfloat16_to_float(const uint16_t* src, float* dst, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    const uint32_t bits = uint32_t(src[i]) << 16;
    std::memcpy(dst + i, &bits, 4);
  }
}

void float_to_bfloat16(const float* src, uint16_t* dst, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    uint32_t bits;
    std::memcpy(&bits, src + i, 4);
    const uint32_t rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16;
    dst[i] = (bits & 0x7FFFFFFF) > 0x7F800000 ? uint16_t(0x7FC0) : uint16_t(rounded);
  }
}

#if defined(__x86_64__)
__attribute__((target("avx,f16c"))) void half_to_float_f16c(const uint16_t* src, float* dst,
                                                             int64_t begin, int64_t end) {
  int64_t i = begin;
  for (; i + 8 <= end; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  for (; i < end; ++i) dst[i] = _cvtsh_ss(src[i]);
}

__attribute__((target("avx,f16c"))) void float_to_half_f16c(const float* src, uint16_t* dst,
                                                             int64_t begin, int64_t end) {
  int64_t i = begin;
  for (; i + 8 <= end; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
  for (; i < end; ++i) dst[i] = _cvtss_sh(src[i], _MM_FROUND_TO_NEAREST_INT);
}

const bool kHasF16c = [] {
  __builtin_cpu_init();  // may run before libgcc's own initialiser
  return __builtin_cpu_supports("f16c") != 0;
}();
#else
constexpr bool kHasF16c = false;
#endif

void half_to_float(const uint16_t* src, float* dst, int64_t begin, int64_t end) {
#if defined(__x86_64__)
  if (kHasF16c) return half_to_float_f16c(src, dst, begin, end);
#endif
  for (int64_t i = begin; i < end; ++i) dst[i] = c10::detail::fp16_ieee_to_fp32_value(src[i]);
}

void float_to_half(const float* src, uint16_t* dst, int64_t begin, int64_t end) {
#if defined(__x86_64__)
  if (kHasF16c) return float_to_half_f16c(src, dst, begin, end);
#endif
  for (int64_t i = begin; i < end; ++i) dst[i] = c10::detail::fp16_ieee_from_fp32_value(src[i]);
}

template <typename From, typename To, typename Kernel>
void stream(const From* src, To* dst, int64_t numel, Kernel kernel) {
  at::parallel_for(0, numel, grain(1, kStreamTask),
                   [&](int64_t begin, int64_t end) { kernel(src, dst, begin, end); });
}

}  // namespace

void to_float(const c10::BFloat16* src, float* dst, int64_t numel) {
  stream(reinterpret_cast<const uint16_t*>(src), dst, numel, bfloat16_to_float);
}
void to_float(const c10::Half* src, float* dst, int64_t numel) {
  stream(reinterpret_cast<const uint16_t*>(src), dst, numel, half_to_float);
}
void from_float(const float* src, c10::BFloat16* dst, int64_t numel) {
  stream(src, reinterpret_cast<uint16_t*>(dst), numel, float_to_bfloat16);
}
void from_float(const float* src, c10::Half* dst, int64_t numel) {
  stream(src, reinterpret_cast<uint16_t*>(dst), numel, float_to_half);
}

}  // namespace lenet_ext::cpu
