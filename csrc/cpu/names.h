// The names of an op's algorithms (and passes), for the internal ops with which tests see and force
// the selectors' choices: an enum's values are the indices of its names' table.
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

}  // namespace lenet_ext::cpu
