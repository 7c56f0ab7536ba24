// bfloat16 and float16 on CPU by widening: a call whose floating-point tensors are all of one
// low-precision dtype (and all on the CPU) runs the op's float32 entry point on float32 copies of
// them, and its floating-point results are rounded back (round to nearest even, as torch rounds).
// So every product is accumulated in float32, in the float32 kernel's order, and a result differs
// from the float32 op's only by the final rounding: the conversions are exact one way and one
// rounding the other. The copies (convert.cpp) cost a read of 2 and a write of 4 bytes an
// element (and the reverse for results) on top of the float32 op; an op with low-precision
// kernels of its own is registered without this wrapper (registration.cpp says which).
// A call that mixes dtypes or devices is passed through unchanged, so the entry point's checks
// refuse it with their usual message (widening would hide the mismatch). The checks of a widened
// call name its own dtype (checks.h: widened_from).
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <optional>
#include <tuple>
#include <type_traits>

#include "../checks.h"
#include "convert.h"

namespace lenet_ext::cpu {

inline bool is_low_precision(at::ScalarType dtype) {
  return dtype == at::kBFloat16 || dtype == at::kHalf;
}

template <typename Low>
at::Tensor converted(const at::Tensor& t, at::ScalarType to) {
  const auto x = t.expect_contiguous();
  auto out = at::empty(t.sizes(), t.options().dtype(to));
  if (to == at::kFloat)
    to_float(x->const_data_ptr<Low>(), out.mutable_data_ptr<float>(), t.numel());
  else
    from_float(x->const_data_ptr<float>(), out.mutable_data_ptr<Low>(), t.numel());
  return out;
}

inline at::Tensor widen(const at::Tensor& t) {
  if (!t.defined() || !is_low_precision(t.scalar_type())) return t;
  return t.scalar_type() == at::kBFloat16 ? converted<c10::BFloat16>(t, at::kFloat)
                                          : converted<c10::Half>(t, at::kFloat);
}
inline std::optional<at::Tensor> widen(const std::optional<at::Tensor>& t) {
  return t ? std::optional<at::Tensor>(widen(*t)) : std::nullopt;
}
template <typename Other>
const Other& widen(const Other& value) {
  return value;
}

// A result back in the call's dtype: float32 tensors are rounded, indices and names kept.
inline at::Tensor narrow(const at::Tensor& t, at::ScalarType dtype) {
  if (!t.defined() || t.scalar_type() != at::kFloat) return t;
  return dtype == at::kBFloat16 ? converted<c10::BFloat16>(t, dtype)
                                : converted<c10::Half>(t, dtype);
}
template <typename... Results>
std::tuple<Results...> narrow(const std::tuple<Results...>& results, at::ScalarType dtype) {
  return std::apply([&](const auto&... r) { return std::tuple<Results...>(narrow(r, dtype)...); },
                    results);
}
template <typename Other>
const Other& narrow(const Other& value, at::ScalarType) {
  return value;
}

// The low-precision dtype every floating-point tensor of a call shares, all on the CPU; none if
// the call has none, mixes dtypes or devices, or has a tensor of a dtype the ops refuse (which
// the checks must then name as given, not as widened).
struct CallDtype {
  at::ScalarType index_dtype;  // the op's indices: int64, or uint8 for lenet_backward's
  std::optional<at::ScalarType> dtype;
  bool mixed = false;
  void see(const at::Tensor& t) {
    if (!t.defined()) return;
    if (!at::isFloatingType(t.scalar_type())) {
      mixed |= t.scalar_type() != index_dtype;  // any other dtype is refused by the checks
      return;
    }
    if (!is_low_precision(t.scalar_type()) || !t.device().is_cpu() ||
        (dtype && *dtype != t.scalar_type()))
      mixed = true;
    dtype = t.scalar_type();
  }
  void see(const std::optional<at::Tensor>& t) {
    if (t) see(*t);
  }
  template <typename Other>
  void see(const Other&) {}
  std::optional<at::ScalarType> low_precision() const {
    return mixed ? std::nullopt : dtype;
  }
};

// Widened<&entry>::call has entry's signature and widens a low-precision call as described above.
template <auto entry, at::ScalarType index_dtype = at::kLong, typename Signature = decltype(entry)>
struct Widened;
template <auto entry, at::ScalarType index_dtype, typename Result, typename... Args>
struct Widened<entry, index_dtype, Result (*)(Args...)> {
  static Result call(Args... args) {
    CallDtype call_dtype{index_dtype};
    (call_dtype.see(args), ...);
    const auto dtype = call_dtype.low_precision();
    if (!dtype) return entry(args...);
    struct Given {  // restored however the call ends
      std::optional<at::ScalarType> outer = widened_from;
      ~Given() { widened_from = outer; }
    } given;
    widened_from = *dtype;
    return narrow(entry(widen(args)...), *dtype);
  }
};

}  // namespace lenet_ext::cpu
