// Which max_pool2d algorithm runs the forward: the claims of each (what it is written for) and the
// choice among those that claim a shape, with its reason. Timings in docs/performance.md
// (max_pool2d).
#include <limits>

#include "algorithms.h"
#include "../names.h"

namespace lenet_ext::cpu::max_pool2d {

namespace {
constexpr const char* kAlgorithmNames[] = {"reference", "general", "2x2"};
}  // namespace

const char* name(Algorithm algorithm) { return kAlgorithmNames[static_cast<int>(algorithm)]; }

std::optional<Algorithm> algorithm_named(std::string_view name) {
  return named<Algorithm>(kAlgorithmNames, name);
}

template <typename scalar_t>
bool claims(Algorithm algorithm, const PoolAxis& rows, const PoolAxis& cols) {
  switch (algorithm) {
    case Algorithm::kReference:
    case Algorithm::kGeneral:
      return true;
    case Algorithm::k2x2:
      // 2x2 windows, stride 2, unpadded, undilated, every window inside the input (no ceil_mode
      // window hanging over the edge), and a row offset that fits the int32 offset lanes
      return rows.kernel == 2 && cols.kernel == 2 && rows.stride == 2 && cols.stride == 2 &&
             rows.padding == 0 && cols.padding == 0 && rows.dilation == 1 && cols.dilation == 1 &&
             2 * rows.output <= rows.input && 2 * cols.output <= cols.input &&
             cols.input < std::numeric_limits<int32_t>::max();
  }
  return false;
}

template <typename scalar_t>
Algorithm select(const PoolAxis& rows, const PoolAxis& cols) {
  // LeNet's pools: two vector loads an input row serve a vector of windows, ~6x the general scan
  if (claims<scalar_t>(Algorithm::k2x2, rows, cols)) return Algorithm::k2x2;
  // everything else: tap by tap across the row, vectorised along the output width
  return Algorithm::kGeneral;
}

template bool claims<float>(Algorithm, const PoolAxis&, const PoolAxis&);
template bool claims<double>(Algorithm, const PoolAxis&, const PoolAxis&);
template Algorithm select<float>(const PoolAxis&, const PoolAxis&);
template Algorithm select<double>(const PoolAxis&, const PoolAxis&);

}  // namespace lenet_ext::cpu::max_pool2d
