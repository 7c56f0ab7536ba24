// Which linear algorithm runs a pass: the claims of each (what it is written for) and, in one
// table, the choice among those that claim a shape, each rule with its reason. The timings behind
// the reasons are in docs/performance.md (linear).
#include "../simd.h"
#include "../names.h"
#include "algorithms.h"

namespace lenet_ext::cpu::linear {

namespace {
constexpr const char* kAlgorithmNames[] = {"reference", "dot", "axpy", "gemm"};

constexpr int64_t kFewRows = 2;  // backward rows (batch 1) below which gemm's tile setup dominates

// Estimated cost per row of input, in FMA vectors: the dot algorithm's 4 x 4 tiles take
// ceil(in / kLanes) steps of 16 FMAs, which run at 4/7 of gemm's rate (each step loads four input
// vectors, from L2), plus ~100 to fold and store; gemm's tiles take one FMA per vector of output
// columns per in_feature (a narrow last panel runs one-vector tiles, and the input is read in
// place), but pack weight^T first (~one an element). Fitted on Xeon 6/207, 1 thread: dot and gemm
// cross at batch ~21 for 9216->128, ~15 for 512->1000, ~20 for 2048->1000, ~7 for 120->84.
bool forward_transposes(int64_t rows, int64_t in_features, int64_t out_features, int64_t lanes) {
  const auto ceil_div = [](int64_t a, int64_t b) { return (a + b - 1) / b; };
  const int64_t dot_row = ceil_div(out_features, 4) * (7 * ceil_div(in_features, lanes) + 25);
  const int64_t gemm_row = ceil_div(out_features, lanes) * in_features;
  return out_features * in_features + rows * gemm_row < rows * dot_row;
}
}  // namespace

const char* name(Algorithm algorithm) { return kAlgorithmNames[static_cast<int>(algorithm)]; }

std::optional<Algorithm> algorithm_named(std::string_view name) {
  return named<Algorithm>(kAlgorithmNames, name);
}

template <typename scalar_t>
bool claims(Algorithm algorithm, Pass pass, const LinearShape& s) {
  switch (algorithm) {
    case Algorithm::kReference:
      return true;
    case Algorithm::kDot:  // its last step re-reads the final vector of a row: one must exist
      return pass == Pass::kForward && s.in_features >= simd::Vec<scalar_t>::kLanes;
    case Algorithm::kAxpy:
      return pass != Pass::kForward;
    case Algorithm::kGemm:
      return true;
  }
  return false;
}

template <typename scalar_t>
Algorithm select(Pass pass, const LinearShape& s) {
  using A = Algorithm;
  if (pass == Pass::kForward) {
    // dot products on weight as stored, unless enough rows amortise packing weight^T for the
    // broadcast tiles, which have no per-tile fold (the cycle estimate above)
    if (claims<scalar_t>(A::kDot, pass, s) &&
        !forward_transposes(s.rows, s.in_features, s.out_features, simd::Vec<scalar_t>::kLanes))
      return A::kDot;
    return A::kGemm;
  }
  // batch 1: a few axpys a gradient row; gemm's tile setup and stores would cost ~6x the product
  if (s.rows <= kFewRows) return A::kAxpy;
  // more rows: register tiles, bound by FMA throughput
  return A::kGemm;
}

template bool claims<float>(Algorithm, Pass, const LinearShape&);
template bool claims<double>(Algorithm, Pass, const LinearShape&);
template Algorithm select<float>(Pass, const LinearShape&);
template Algorithm select<double>(Pass, const LinearShape&);

}  // namespace lenet_ext::cpu::linear
