// The names of an op's algorithms and of the passes of a layer with a weight, for the internal ops
// with which tests see and force the selectors' choices: an enum's values are the indices of its
// names' table.
#pragma once
#include <cstddef>
#include <optional>
#include <string_view>

namespace lenet_ext::cpu {

template <typename Enum, std::size_t N>
std::optional<Enum> named(const char* const (&names)[N], std::string_view name) {
  for (std::size_t i = 0; i < N; ++i)
    if (name == names[i]) return static_cast<Enum>(i);
  return std::nullopt;
}

// The passes conv2d and linear choose an algorithm for, each on its own.
enum class Pass { kForward, kGradInput, kGradWeight };
inline constexpr const char* kPassNames[] = {"forward", "grad_input", "grad_weight"};

inline const char* name(Pass pass) { return kPassNames[static_cast<int>(pass)]; }
inline std::optional<Pass> pass_named(std::string_view name) { return named<Pass>(kPassNames, name); }

}  // namespace lenet_ext::cpu
