// float32 <-> bfloat16 / float16 over a contiguous run, as torch converts (convert.cpp).
#pragma once
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

namespace lenet_ext::cpu {

void to_float(const c10::BFloat16* src, float* dst, int64_t numel);
void to_float(const c10::Half* src, float* dst, int64_t numel);
void from_float(const float* src, c10::BFloat16* dst, int64_t numel);  // round to nearest even
void from_float(const float* src, c10::Half* dst, int64_t numel);

}  // namespace lenet_ext::cpu
