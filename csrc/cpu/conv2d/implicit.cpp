// conv2d by implicit GEMM, for no dilation: no unrolled columns. The input of a chunk is copied
// once into a zero-padded buffer, de-interleaved by the stride into phases (padded row
// R * stride_h + a, column J * stride_w + b at phase (a, b), row R, column J) and laid out
// [channel][phase][row][image][phase width pw], a chunk's images side by side in a line. With
// positions counted along the lines ("wide" positions n = row * line + image * pw + column), tap
// (c, kh, kw) reads phase (kh % stride_h, kw % stride_w) at the fixed offset
// (kh / stride_h) * line + kw / stride_w, so each of the GEMM's B panel rows is one contiguous run
// of the buffer (stride 1 has one phase, the padded image itself). The product
// [out_channels, wide positions] goes to a per-thread block, whose columns past out_w are dropped
// on the way out. Memory: the padded copy (the chunk's input, not taps times it as im2col's
// columns) and the block; the waste is the dropped columns, (kernel_w - 1) / stride_w of every
// pw (side by side, the images need no rows between them, which a stack of them would compute and
// drop). On small planes at stride 1 each kernel column has a phase of its own instead, the
// padded input shifted by kw and out_w wide: kernel_w copies, and no column is dropped.
// grad_input (stride 1) is the same kernel: the forward convolution of grad_output, padded
// by kernel - 1 - pad, with the weight flipped and its channels swapped (its zero padding meets
// every weight, hence only where 0 * weight is 0), the flip folded into the packing of the
// weight. Chunks (whole planes, several images a chunk; or bands of rows of a large plane) are
// fixed by the shape, so each element is summed in the same order for any thread count.
#include <algorithm>
#include <utility>

#include "../gemm.h"
#include "../parallel.h"
#include "algorithms.h"

namespace lenet_ext::cpu::conv2d {
namespace {

// Wide columns a chunk aims at: enough for the GEMM's panels to pay for their packing.
constexpr int64_t kTargetColumns = 1024;
// The padded copy's bound: a band of rows of a large plane stays within it.
constexpr int64_t kBufferBytes = int64_t(4) << 20;

// The stride phases of the padded input that some tap reads, each `width` (pw) wide: a tap reads
// at most (kernel_w - 1) / stride_w columns and `halo` rows past its output position's.
struct Phases {
  int64_t along_h, along_w, width, halo;
  bool unrolled;  // a phase for each kernel column, out_w wide

  template <typename scalar_t>
  static Phases of(const ConvShape& s) {
    const int64_t dropped = (s.kernel_w - 1) / s.stride_w;
    // Stride 1: the kernel's columns unrolled (kernel_w copies of the padded input, each shifted
    // by a column) where the dropped columns are over an eighth of the wide ones (3x3 on 7x7 to
    // 15x15), or where a row is then one panel of B (32 floats), whose loads stay aligned. Stock
    // / ours, forward: 16->16 @32 batch 8 0.91 -> 1.18, batch 32 0.76 -> 1.0; 512->512 @7 batch
    // 32 0.62 -> 0.75; 64->64 @8 batch 8 0.60 -> 0.85. Rows of 16 lost 5% (32->32 @16), rows of 26
    // on 28 too; on wider planes the copies gain nothing and their phases can fall whole pages
    // apart (3->16 @512: 5x slower).
    constexpr int64_t kPanel = gemm::Tile<scalar_t>::kCols;
    const bool unrolled = s.stride_w == 1 && (8 * dropped > s.out_w || s.out_w == kPanel);
    return {std::min(s.stride_h, s.kernel_h),
            unrolled ? s.kernel_w : std::min(s.stride_w, s.kernel_w),
            unrolled ? s.out_w : s.out_w + dropped, (s.kernel_h - 1) / s.stride_h, unrolled};
  }
  int64_t count() const { return along_h * along_w; }
  // where tap (kh, kw) reads: its phase, and its column in the phase
  int64_t phase(const ConvShape& s, int64_t kh, int64_t kw) const {
    return kh % s.stride_h * along_w + (unrolled ? kw : kw % s.stride_w);
  }
  int64_t column(const ConvShape& s, int64_t kw) const { return unrolled ? 0 : kw / s.stride_w; }
};

// A group's weight past this many bytes does not stay in L2 from one chunk to the next.
constexpr int64_t kWeightInCacheBytes = int64_t(2) << 20;
constexpr int64_t kWeightChunks = 2;  // chunks of a small batch under such a weight

// The chunks of a batch: `images` whole planes each, or bands of `rows` output rows of one image.
struct Chunks {
  int64_t images, rows, bands, count;

  template <typename scalar_t>
  static Chunks of(const ConvShape& s, int64_t batch, const Phases& p) {
    const int64_t pw = p.width, ph = s.out_h + p.halo;  // a phase's rows and columns
    if (s.out_h * pw >= kTargetColumns || batch == 1) {
      const int64_t most =
          kBufferBytes / int64_t(sizeof(scalar_t)) / std::max<int64_t>(1, s.channels * p.count() * pw) -
          p.halo;  // (a 0-channel input has a buffer of its kernel_w zeros)
      const int64_t rows = std::clamp<int64_t>((kTargetColumns + pw - 1) / pw, 1,
                                               std::max<int64_t>(1, std::min(most, s.out_h)));
      const int64_t bands = (s.out_h + rows - 1) / rows;
      return {1, rows, bands, batch * bands};
    }
    const int64_t widest = (kTargetColumns + ph * pw - 1) / (ph * pw);  // images a chunk at most
    int64_t images = std::max<int64_t>(1, std::min(widest, (batch + kMinChunks - 1) / kMinChunks));
    // A weight past L2 streams from memory once a chunk: kWeightChunks chunks where they are not
    // too wide (512->512 @7 batch 8: 2 chunks of 4 images, not 8 of one, forward 0.57 -> 0.75 of
    // stock's speed on 2 threads). Fixed, not the thread count: the GEMM's path for A (read in
    // place under a few panels, or packed) follows the chunks, and the portable build's sums
    // with it.
    const int64_t each = (batch + kWeightChunks - 1) / kWeightChunks;
    if (s.weight_block() * int64_t(sizeof(scalar_t)) > kWeightInCacheBytes && each <= widest)
      images = std::max(images, each);
    return {images, s.out_h, 1, (batch + images - 1) / images};
  }
};

// B's packer over the padded buffer: tap k = (c, kh, kw) starts at c * channel_stride + its
// phase's start + (kh / stride_h) * line + its column in the phase (Phases::column); a panel row
// past the buffer's end (wide columns that are dropped) is zero.
template <typename scalar_t>
struct PackTaps {
  using value_type = scalar_t;
  const scalar_t* buffer;
  int64_t end, channel_stride, phase_stride, line;
  const ConvShape& s;
  const Phases& phases;

  // B(k, 0): the GEMM reads full panels of few-row products in place from here (the buffer's
  // kernel_w of slack keeps the last full panel inside it)
  const scalar_t* row(int64_t k) const {
    const int64_t kernel = s.kernel_h * s.kernel_w;
    const int64_t kh = k % kernel / s.kernel_w, kw = k % s.kernel_w;
    return buffer + k / kernel * channel_stride + phases.phase(s, kh, kw) * phase_stride +
           kh / s.stride_h * line + phases.column(s, kw);
  }

  void operator()(int64_t k0, int64_t depth, int64_t n0, int64_t cols, scalar_t* out) const {
    constexpr int W = gemm::Tile<scalar_t>::kCols;
    for (int64_t k = k0; k < k0 + depth; ++k) {
      const scalar_t* src = row(k) + n0;
      const int64_t left = buffer + end - src;  // elements before the buffer's end
      for (int64_t p0 = 0; p0 < cols; p0 += W)
        gemm::detail::copy_panel_row<scalar_t, W>(
            src + p0, std::min({int64_t(W), cols - p0, std::max<int64_t>(0, left - p0)}),
            out + p0 * depth + (k - k0) * W);
    }
  }
};

// The columns j of a phase row whose padded column j * stride_w + offset is in the image.
std::pair<int64_t, int64_t> phase_columns(const ConvShape& s, int64_t offset, int64_t count) {
  const int64_t first = offset >= s.pad_w ? 0 : (s.pad_w - offset + s.stride_w - 1) / s.stride_w;
  const int64_t last = std::min(count, (s.in_w + s.pad_w - offset + s.stride_w - 1) / s.stride_w);
  return {first, std::max(first, last)};
}

// dst[j] = row[j * stride_w + offset - pad_w] for j in [first, last); `row` lies in a plane that
// ends at `end`.
template <typename scalar_t>
void copy_phase_row(const scalar_t* row, const scalar_t* end, const ConvShape& s, int64_t offset,
                    std::pair<int64_t, int64_t> columns, scalar_t* dst) {
  const auto [first, last] = columns;
  const scalar_t* src = row + first * s.stride_w + offset - s.pad_w;
  if (s.stride_w == 1) return (void)std::copy_n(src, last - first, dst + first);
  if (s.stride_w == 2)
    return copy_even(src, last - first, src + 2 * (last - first) <= end, dst + first);
  for (int64_t j = first; j < last; ++j) dst[j] = src[(j - first) * s.stride_w];
}

// The forward convolution of `input` (no dilation) for every chunk; `weight` is the group's
// [out_channels, taps] block at weight + group * s.weight_block(), or with `flipped` the weight
// whose flipped copy that would be (WeightAsA).
template <typename scalar_t>
void convolve(const scalar_t* input, const scalar_t* weight, const scalar_t* bias,
              scalar_t* output, int64_t batch, int64_t groups, const ConvShape& s,
              bool flipped = false) {
  const Phases phases = Phases::of<scalar_t>(s);
  const int64_t pw = phases.width;
  const Chunks chunks = Chunks::of<scalar_t>(s, batch, phases);
  const int64_t band = chunks.rows + phases.halo;  // rows of each phase a band reads
  const int64_t positions = s.positions();
  const WeightAsA<scalar_t> weights(weight, groups, s, chunks.count, flipped);
  run_conv_tasks(groups * chunks.count, s.multiply_adds() * chunks.images * chunks.rows / s.out_h,
                 [&](int64_t task) {
    const int64_t group = task / chunks.count, chunk = task % chunks.count;
    const int64_t image0 = chunk / chunks.bands * chunks.images;
    const int64_t images = std::min(chunks.images, batch - image0);
    const int64_t oh0 = chunk % chunks.bands * chunks.rows;
    const int64_t rows = std::min(chunks.rows, s.out_h - oh0);
    // the padded copy: [channel][phase][band][image][pw], plus kernel_w of zeros at the end
    const int64_t line = images * pw, phase_stride = band * line;
    const int64_t channel_stride = phases.count() * phase_stride;
    const int64_t size = s.channels * channel_stride + s.kernel_w;
    scalar_t* buffer = scratch<scalar_t>(Scratch::kColumns, size);
    std::fill_n(buffer, size, scalar_t(0));
    for (int64_t c = 0; c < s.channels; ++c)
      for (int64_t a = 0; a < phases.along_h; ++a)
        for (int64_t b = 0; b < phases.along_w; ++b) {
          const auto columns = phase_columns(s, b, pw);  // (two divisions a row cost ~7%)
          for (int64_t j = 0; j < images; ++j) {
            const scalar_t* src = input + (((image0 + j) * groups + group) * s.channels + c) * s.in_h * s.in_w;
            scalar_t* dst = buffer + c * channel_stride + (a * phases.along_w + b) * phase_stride +
                            j * pw;
            for (int64_t r = 0; r < band; ++r) {
              const int64_t ih = (oh0 + r) * s.stride_h + a - s.pad_h;
              if (ih >= 0 && ih < s.in_h)
                copy_phase_row(src + ih * s.in_w, src + s.in_h * s.in_w, s, b, columns,
                               dst + r * line);
            }
          }
        }
    // [out_channels, wide] = weight [out_channels, taps] x B [taps, wide]
    const int64_t wide = (rows - 1) * line + images * pw;
    scalar_t* product = scratch<scalar_t>(Scratch::kBlock, s.out_channels * wide);
    weights.product(group, [&](const auto& w) {
      gemm::gemm(s.out_channels, wide, s.taps(), w,
                 PackTaps<scalar_t>{buffer, size, channel_stride, phase_stride, line, s, phases},
                 product, wide);
    });
    for (int64_t j = 0; j < images; ++j)
      for (int64_t oc = 0; oc < s.out_channels; ++oc) {
        const scalar_t b = bias ? bias[group * s.out_channels + oc] : scalar_t(0);
        scalar_t* out = output + ((image0 + j) * groups + group) * s.output_block() +
                        oc * positions + oh0 * s.out_w;
        const scalar_t* from = product + oc * wide + j * pw;
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t ow = 0; ow < s.out_w; ++ow) out[r * s.out_w + ow] = from[r * line + ow] + b;
      }
  });
}

}  // namespace

template <typename scalar_t>
void implicit_forward(const scalar_t* input, const scalar_t* weight, const scalar_t* bias,
                      scalar_t* output, int64_t batch, int64_t groups, const ConvShape& s) {
  convolve(input, weight, bias, output, batch, groups, s);
}

template <typename scalar_t>
void implicit_grad_input(const scalar_t* grad_output, const scalar_t* weight,
                         scalar_t* grad_input, int64_t batch, int64_t groups, const ConvShape& s) {
  // grad_input = grad_output (padded by kernel - 1 - pad) convolved with the flipped weight,
  // channels swapped: flipped[g][c][oc][kh][kw] = weight[g][oc][c][kernel_h-1-kh][kernel_w-1-kw]
  const ConvShape t{s.out_channels, s.out_h, s.out_w, s.channels, s.in_h, s.in_w,
                    s.kernel_h, s.kernel_w, 1, 1, s.kernel_h - 1 - s.pad_h,
                    s.kernel_w - 1 - s.pad_w, 1, 1};
  convolve(grad_output, weight, static_cast<const scalar_t*>(nullptr), grad_input, batch, groups,
           t, /*flipped=*/true);
}

LENET_EXT_CONV2D_FORWARD(implicit_forward)
LENET_EXT_CONV2D_GRAD(implicit_grad_input)

}  // namespace lenet_ext::cpu::conv2d
