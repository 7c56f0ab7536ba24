// Which conv2d algorithm runs a pass: the claims of each (what it is written for) and, in one
// table, the choice among those that claim a shape, each rule with its reason. The timings behind
// the reasons are in docs/performance.md (conv2d).
#include "algorithms.h"
#include "../gemm.h"
#include "../names.h"

namespace lenet_ext::cpu::conv2d {

namespace {
constexpr int64_t kImplicitPlane = 32 * 32;  // the largest plane implicit's grad_input takes
constexpr const char* kAlgorithmNames[] = {"reference", "im2col", "direct", "rows", "lanes", "implicit",
                                           "winograd"};
}  // namespace

const char* name(Algorithm algorithm) { return kAlgorithmNames[static_cast<int>(algorithm)]; }

std::optional<Algorithm> algorithm_named(std::string_view name) {
  return named<Algorithm>(kAlgorithmNames, name);
}

template <typename scalar_t>
bool claims(Algorithm algorithm, Pass pass, const ConvShape& s, int64_t batch,
            bool finite_weight) {
  constexpr int64_t L = Lanes<scalar_t>::kLanes;
  // direct, rows and lanes: stride 1, no dilation, no padding, a group's output channels within
  // one vector
  const bool small = s.stride_h == 1 && s.stride_w == 1 && s.dilation_h == 1 &&
                     s.dilation_w == 1 && s.pad_h == 0 && s.pad_w == 0 && s.out_channels <= L;
  const bool five_wide = s.kernel_w == kDirectKernelW;  // their unrolled tap tiles
  switch (algorithm) {
    case Algorithm::kReference:
    case Algorithm::kIm2col:
      return true;
    case Algorithm::kDirect:
      switch (pass) {
        case Pass::kForward: return small;
        // one vector holds an input row; weights multiply grad_output's zero padding, which
        // is right only when 0 * weight is 0
        case Pass::kGradInput: return small && s.in_w <= L && finite_weight;
        // a zero-bordered copy of each image takes the padding; tap tiles 3 or 5 wide; its
        // transposed grad_output (positions x lanes a thread) within L2: up to a 64x64 plane (a
        // batch-1 1024x1024 plane took 64 MB on one thread: 2.6 -> 1.2 of stock's speed)
        case Pass::kGradWeight:
          return s.stride_h == 1 && s.stride_w == 1 && s.dilation_h == 1 && s.dilation_w == 1 &&
                 s.out_channels <= L && (five_wide || s.kernel_w == 3) &&
                 s.positions() * L * int64_t(sizeof(scalar_t)) <= kDirectLanesBytes;
      }
      return false;
    case Algorithm::kRows:  // an output row as the vector: one to two vectors wide
      return small && 2 * s.out_channels <= L &&
             (pass == Pass::kForward ? s.out_w >= L
                                     : pass == Pass::kGradWeight && s.out_w <= 2 * L && five_wide);
    case Algorithm::kLanes:  // a block of kLanes images; grad_input holds a whole row in registers
      return small && five_wide && batch >= L &&
             (pass != Pass::kGradInput || s.in_w <= kLanesMaxRow);
    case Algorithm::kImplicit:  // shifted views of stride phases need no dilation; grad_input
      // (stride 1) pads grad_output by kernel - 1 - pad (so pad < kernel), whose zeros meet every
      // weight
      return s.dilation_h == 1 && s.dilation_w == 1 &&
             (pass == Pass::kForward ||
              (pass == Pass::kGradInput && s.stride_h == 1 && s.stride_w == 1 &&
               s.pad_h < s.kernel_h && s.pad_w < s.kernel_w && finite_weight));
    case Algorithm::kWinograd:  // 3x3, stride 1; grad_input pads grad_output by 2 - pad
      return s.kernel_h == 3 && s.kernel_w == 3 && s.stride_h == 1 && s.stride_w == 1 &&
             s.dilation_h == 1 && s.dilation_w == 1 &&
             (pass != Pass::kGradInput || (s.pad_h <= 2 && s.pad_w <= 2));
  }
  return false;
}

template <typename scalar_t>
Algorithm select(Pass pass, const ConvShape& s, int64_t batch, bool finite_weight) {
  constexpr int64_t L = Lanes<scalar_t>::kLanes;
  const auto fits = [&](Algorithm a) { return claims<scalar_t>(a, pass, s, batch, finite_weight); };
  using A = Algorithm;
  // Winograd F(2x2, 3x3): 2.25x fewer multiply-adds than any direct algorithm, from 128 tiles
  // (transforming the weight costs as much as ~50 tiles' products: 256->256 @14 and 512->512 @7
  // at batch 1 ran 0.2-0.7x stock). Its products have the output channels as rows (forward),
  // which want 64 or more, or the input channels (grad_input), which want at least as many as
  // the output channels it sums over; grad_weight's have both as a tile and the tiles as depth.
  // Forced against implicit/im2col, batch 32 unless said, stock / ours: forward 128->128 @28 1.0
  // against 0.65, 256->256 @14 1.14 / 0.72, 64->64 @56 batch 1 0.88 / 0.77; grad_input 256->256
  // @14 1.15 / 0.73, 16->16 @32 0.82 / 0.71, 32->32 @32 batch 8 0.91 / 0.83, but 32->64 @26 0.70
  // / 0.86 and 16->32 @32 0.56 / 0.73 (im2col); grad_weight 1.2-1.3 / 0.7 from 128 channels,
  // 16->16 @32 0.56 / 0.41, 32->32 @16 0.85 / 0.45.
  // The forward's products want 64 input channels as their depth too: MNIST's conv2 (32->64
  // @26) at batch 8 / 32 / 64 ran 0.88 / 1.59 / 1.61 against implicit's 1.12 / 2.05 / 1.89.
  // Rows of 4 tiles (8x8, 7x7 planes) are stacked 4 to a vector in both transforms, yet implicit
  // still won or tied forward and grad_input there under a large U (512->512 @7 batch 8 0.73 /
  // 0.75 and 0.68 / 0.77); grad_weight, which has no inverse, won (64->64 @8 1.22 against
  // im2col's 0.71, 512->512 @7 1.07 / 1.00). Under a small one (winograd_small_weight: 64x64
  // channels) Winograd won those too (64->64 @8, implicit's time / Winograd's, forward and
  // grad_input alike: batch 8 / 16 / 32 / 64 1.28 / 1.21 / 1.03-1.08 / 1.61).
  // From 16 channels and no more output channels, Winograd takes both where its tiles make
  // chunks of a thread's L2 enough for a chunk a thread (winograd_thread_chunks), as implicit's
  // time / Winograd's: 32->32 @16 batch 32 / 64 1.37 / 1.40, 16->16 @32 batch 16 / 32 / 64 1.21
  // / 1.26 / 1.30, 32->32 @32 batch 8 / 32 1.39 / 1.48; with fewer chunks implicit won (32->32
  // @16 batch 8 / 16 0.95 / 0.84, 16->16 @32 batch 8 0.73), and with more output channels the
  // others held (MNIST's conv2 batch 16 / 64: forward 1.01 / 0.96, grad_input im2col's 0.91 /
  // 0.90).
  // Otherwise grad_input wants 64 channels where implicit claims the plane (up to 32x32 from
  // batch 8; the timings with implicit's rule below): 32->32 @16 implicit 0.81 / 0.64; from 64
  // channels Winograd won or tied (64->64 @32 batch 8 / 32 1.47 / 1.58 against 1.14 / 1.46).
  // A dU past kWinogradBlockBytes comes in blocks of output channels, and grad_weight transforms
  // the input again for each: 512->512 @7 wants 384 tiles (batch 8 / 16 / 24, 128-384 tiles:
  // 0.91-0.97 / 1.00-1.02 / 1.08 against im2col's 1.21-1.54 / 1.11-1.31 / 1.07).
  // grad_weight of a vector of output channels or fewer is direct's, which reads each image in
  // place and transforms nothing (16->16 @32 batch 8 / 32 / 64: 1.32 / 1.78 / 1.12 of stock's
  // speed against Winograd's 0.64 / 0.90 / 0.56; 3->16 @32 batch 32: 1.54 against im2col's 0.50).
  const int64_t tiles_w = (s.out_w + 1) / 2, tiles = batch * ((s.out_h + 1) / 2) * tiles_w;
  if (fits(A::kWinograd) &&
      tiles >= (pass == Pass::kGradWeight &&
                        winograd_block<scalar_t>(s.channels, s.out_channels) < s.out_channels
                    ? 384
                    : 128)) {
    const bool thread_chunks =
        pass == Pass::kForward
            ? winograd_thread_chunks<scalar_t>(batch, s.out_h, s.out_w, s.channels, s.out_channels)
            : winograd_thread_chunks<scalar_t>(batch, s.in_h, s.in_w, s.out_channels, s.channels);
    const bool planes = tiles_w >= 7 || winograd_small_weight<scalar_t>(s.channels, s.out_channels);
    const bool no_more_out = s.channels >= 16 && s.channels >= s.out_channels;
    const bool wide =
        pass == Pass::kForward
            ? (planes && s.out_channels >= 64 && s.channels >= 64) || (no_more_out && thread_chunks)
        : pass == Pass::kGradInput
            ? no_more_out && (thread_chunks ||
                              (planes && (s.channels >= 64 || (tiles_w >= 16 &&
                                                               s.in_h * s.in_w > kImplicitPlane))))
            : s.channels >= 16 && s.out_channels >= 16 && !fits(A::kDirect);
    if (wide) return A::kWinograd;
  }
  switch (pass) {
    case Pass::kForward:
      // over half a vector of output channels (conv2's 16): direct runs at ~75% of the FMA peak,
      // and the lanes' transposes would cost more than they win
      if (fits(A::kDirect) && 2 * s.out_channels > L) return A::kDirect;
      // fewer (conv1's 6 of 16 lanes): images as the lanes, from a block of them
      if (fits(A::kLanes)) return A::kLanes;
      // fewer, below a block of images: output row segments as the lanes
      if (fits(A::kRows)) return A::kRows;
      // stride 1 but for 1x1 (whose columns are the input itself): panels packed from the image,
      // or read from it in place, instead of unrolled columns (1.1-2x im2col, 3x3 layers of 1-256
      // channels, planes 8x8 to 512x512); strided, where the kernel is wider than 1x1 or the GEMM
      // reads B in place (16->32 3x3/2 @32 b32 1.7x im2col, stem 7x7/2 @224 1.4-1.7x; from 128
      // channels, 2 threads, stock / ours against im2col's: 256->512 3x3/2 @14 b8 0.96 / 0.76,
      // 512->512 @14 b16 0.92 / 0.79, b64 0.86 / 0.76, 128->128 @56 b8 1.03 / 0.93); a 1x1 of
      // more channels reads every other column, which im2col copies out faster (256->512 1x1/2
      // @56 b8 1.58 / 1.68, 64->128 @56 1.58 / 1.86)
      if (fits(A::kImplicit) && !pointwise(s) &&
          (s.stride_h * s.stride_w == 1 || s.kernel_h * s.kernel_w > 1 ||
           s.out_channels <= gemm::Tile<scalar_t>::kFewUses * gemm::Tile<scalar_t>::kRows))
        return A::kImplicit;
      break;
    case Pass::kGradInput:
      // every lane a real product; direct would multiply 20 of 70 (position, kw) pairs by padding
      if (fits(A::kLanes)) return A::kLanes;
      if (fits(A::kDirect)) return A::kDirect;
      // many input channels on a small plane: the products are wide enough, and there is no
      // col2im (1.2-1.9x im2col for 32-64 channels on 8x8-16x16 at batch 32); on larger planes
      // and fewer channels im2col's products were 4-60% faster, and so they were below ~1K
      // positions and 8 images, where packing the flipped weight is not paid back (batch 1:
      // 32->32 @16 1.5x, 64->64 @8 2x, 256->256 @14 1.4x, 512->512 @7 1.6x faster by im2col;
      // batch 8: 512->512 @7 0.75 against im2col's 0.62 of stock's speed, 64->64 @8 1.0 / 0.91);
      // 1x1 of more than 256 channels only below batch 32 (batch 8: 2048->512 @7 0.88 / 0.74,
      // 512->2048 @7 0.92 / 0.84; batch 32: 1.09 / 1.22 and 0.93 / 1.03). From batch 8 it takes
      // planes up to 32x32 too where the output channels are no more than the input's: 16->16
      // @32 batch 8 / 32 / 64 1.59 / 3.19 / 2.82 against im2col's 1.02 / 1.57 / 1.49 (Winograd's
      // 1.00 / 1.88 / 1.77), 32->32 @32 batch 8 / 32 1.18 / 1.95 against 0.89 / 1.42, 32->32 @26
      // batch 32 0.97 / 0.83, 16->16 @24 1.22 / 0.54; with more output channels im2col held
      // (MNIST's conv2, 32->64 @26, batch 32 / 64: 0.92 / 0.95 against 0.97 / 1.03)
      if (fits(A::kImplicit) && s.channels >= 16 &&
          (s.channels <= 256 || !pointwise(s) || batch < 32) &&
          ((s.in_h * s.in_w <= 256 && (batch >= 8 || batch * s.in_h * s.in_w >= 1024)) ||
           (batch >= 8 && !pointwise(s) && s.channels >= s.out_channels &&
            s.in_h * s.in_w <= kImplicitPlane)))
        return A::kImplicit;
      break;
    case Pass::kGradWeight:
      // whole-vector loads only, where direct loads a broadcast for every FMA
      if (fits(A::kLanes)) return A::kLanes;
      // half a vector of output channels or fewer: output rows as the lanes fill them
      if (fits(A::kRows)) return A::kRows;
      if (fits(A::kDirect)) return A::kDirect;
      break;
  }
  // everything else: the GEMM's tiles are full from a few dozen output channels on
  return A::kIm2col;
}

template bool claims<float>(Algorithm, Pass, const ConvShape&, int64_t, bool);
template bool claims<double>(Algorithm, Pass, const ConvShape&, int64_t, bool);
template Algorithm select<float>(Pass, const ConvShape&, int64_t, bool);
template Algorithm select<double>(Pass, const ConvShape&, int64_t, bool);

}  // namespace lenet_ext::cpu::conv2d
