// conv2d by im2col + GEMM (gemm.h), the general algorithm: any stride, padding, dilation and
// group. The patches of an image are unrolled into columns [taps = channels * kernel_h * kernel_w,
// positions] a chunk of positions at a time, into a per-thread buffer of at most kColumnsBytes
// (L2-sized, so the GEMM's packing reads it from cache and the workspace stays bounded however
// large the plane); a 1x1 convolution with stride 1 is already its columns, and its forward runs
// as one GEMM on the input. forward: output[:, chunk] = weight x columns; grad_input: columns =
// weight^T x grad_output[:, chunk], added back into the image (col2im); grad_weight +=
// grad_output[:, chunk] x columns^T over every image and chunk (grad_weight^T += columns x
// grad_output[:, chunk]^T for few output channels). Threads take disjoint parts of the
// result (chunks of positions, ranges of input channels, ranges of taps), and chunks are fixed by
// the shape, so each element is summed in the same order for any thread count.
#include <ATen/Parallel.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "../gemm.h"
#include "../parallel.h"
#include "algorithms.h"

namespace lenet_ext::cpu::conv2d {
namespace {

using gemm::Strided;

constexpr int64_t kColumnsBytes = int64_t(1) << 20;

// Columns a chunk holds at least, however many taps: products narrower than this lose more to
// packing than the bounded buffer saves.
constexpr int64_t kMinChunk = 256;
// Parts to split each of `items` into so that the threads have work: 1 when the items alone
// spread evenly enough.
int64_t parts_per_item(int64_t items, int64_t most) {
  const int64_t threads = at::get_num_threads();
  if (threads == 1 || items % threads == 0 || items >= 4 * threads) return 1;
  return std::max<int64_t>(1, std::min(most, threads));
}

// The output indices o in [first, last) whose input index o * stride + offset lies in [0, size).
std::pair<int64_t, int64_t> inside(int64_t offset, int64_t stride, int64_t size, int64_t out_size) {
  const auto first_reaching = [&](int64_t bound) {  // smallest o with o * stride + offset >= bound
    const int64_t distance = bound - offset;
    return std::min(out_size, distance <= 0 ? 0 : (distance + stride - 1) / stride);
  };
  return {first_reaching(0), first_reaching(size)};
}

// Calls visit(tap, column, input_row, input_col, count) for every row segment of the unrolled
// matrix restricted to taps [tap0, tap1) and positions [p0, p1) that reads the image: `count`
// entries of row `tap` from column `column` (position - p0) read row input_row (channel * in_h +
// ih) of the image from input_col, stride_w apart. Every other entry is padding.
template <typename Visit>
void for_each_inside_segment(const ConvShape& s, int64_t tap0, int64_t tap1, int64_t p0,
                             int64_t p1, Visit visit) {
  const int64_t kernel = s.kernel_h * s.kernel_w;
  const int64_t oh_begin = p0 / s.out_w, oh_end = (p1 + s.out_w - 1) / s.out_w;
  // each kernel row's and column's outputs inside the image, once a call: divisions a tap cost
  // as much as the copies of 8-wide rows
  std::vector<std::pair<int64_t, int64_t>> rows(s.kernel_h), cols(s.kernel_w);
  for (int64_t kh = 0; kh < s.kernel_h; ++kh)
    rows[kh] = inside(kh * s.dilation_h - s.pad_h, s.stride_h, s.in_h, s.out_h);
  for (int64_t kw = 0; kw < s.kernel_w; ++kw)
    cols[kw] = inside(kw * s.dilation_w - s.pad_w, s.stride_w, s.in_w, s.out_w);
  int64_t c = tap0 / kernel, kh = tap0 % kernel / s.kernel_w, kw = tap0 % s.kernel_w;
  for (int64_t tap = tap0; tap < tap1; ++tap) {
    const int64_t ih_offset = kh * s.dilation_h - s.pad_h, iw_offset = kw * s.dilation_w - s.pad_w;
    const auto [oh_first, oh_last] = rows[kh];
    const auto [ow_first, ow_last] = cols[kw];
    for (int64_t oh = std::max(oh_first, oh_begin); oh < std::min(oh_last, oh_end); ++oh) {
      const int64_t row_start = oh * s.out_w;
      const int64_t first = std::max(ow_first, p0 - row_start);
      const int64_t last = std::min(ow_last, p1 - row_start);
      if (first < last)
        visit(tap, row_start + first - p0, c * s.in_h + oh * s.stride_h + ih_offset,
              first * s.stride_w + iw_offset, last - first);
    }
    if (++kw == s.kernel_w) {
      kw = 0;
      if (++kh == s.kernel_h) kh = 0, ++c;
    }
  }
}

// columns[(tap - tap0) * ld + position - p0] = image[c][ih][iw], or 0 where padding.
template <typename scalar_t>
void im2col(const scalar_t* image, scalar_t* columns, int64_t ld, const ConvShape& s,
            int64_t tap0, int64_t tap1, int64_t p0, int64_t p1) {
  if (s.pad_h > 0 || s.pad_w > 0)  // without padding every entry is written below
    for (int64_t tap = tap0; tap < tap1; ++tap)
      std::fill_n(columns + (tap - tap0) * ld, p1 - p0, scalar_t(0));
  for_each_inside_segment(s, tap0, tap1, p0, p1, [&](int64_t tap, int64_t column, int64_t row,
                                                       int64_t col, int64_t count) {
    scalar_t* __restrict dst = columns + (tap - tap0) * ld + column;
    const scalar_t* __restrict src = image + row * s.in_w + col;
    if (s.stride_w == 1) std::copy_n(src, count, dst);
    else if (s.stride_w == 2)
      copy_even(src, count, src + 2 * count <= image + s.input_block(), dst);
    else for (int64_t i = 0; i < count; ++i) dst[i] = src[i * s.stride_w];
  });
}

// The adjoint: image[c][ih][iw] += columns[...], in a fixed order.
template <typename scalar_t>
void col2im(const scalar_t* columns, int64_t ld, scalar_t* image, const ConvShape& s,
            int64_t tap0, int64_t tap1, int64_t p0, int64_t p1) {
  for_each_inside_segment(s, tap0, tap1, p0, p1, [&](int64_t tap, int64_t column, int64_t row,
                                                       int64_t col, int64_t count) {
    scalar_t* __restrict dst = image + row * s.in_w + col;
    const scalar_t* __restrict src = columns + (tap - tap0) * ld + column;
    for (int64_t i = 0; i < count; ++i) dst[i * s.stride_w] += src[i];
  });
}

// The GEMMs' N (forward, grad_input) or K (grad_weight): (image, position) pairs of one group,
// in chunks fixed by the shape. A plane of at least a chunk is cut into chunks of positions; smaller
// planes are taken whole, several images a chunk, so that the products stay wide.
struct Chunks {
  int64_t batch, positions, width, images, per_image, count;

  template <typename scalar_t>
  static Chunks of(const ConvShape& s, int64_t batch) {
    constexpr int64_t kCols = gemm::Tile<scalar_t>::kCols;
    const int64_t fit =
        kColumnsBytes / int64_t(sizeof(scalar_t)) / std::max<int64_t>(1, s.taps()) / kCols * kCols;
    const int64_t target = std::max(kMinChunk, fit), positions = s.positions();
    if (positions >= target) {
      const int64_t per_image = (positions + target - 1) / target;
      return {batch, positions, target, 1, per_image, batch * per_image};
    }
    // at least kMinChunks chunks where the batch allows, so that the threads share them
    const int64_t images = std::max<int64_t>(1, std::min(target / std::max<int64_t>(1, positions),
                                                         (batch + kMinChunks - 1) / kMinChunks));
    return {batch, positions, positions, images, 1, (batch + images - 1) / images};
  }
  // chunk c: images [image, image + count) at positions [p0, p1) of each
  struct Chunk {
    int64_t image, count, p0, p1;
    int64_t columns() const { return count * (p1 - p0); }
  };
  Chunk operator[](int64_t c) const {
    if (images == 1) {
      const int64_t p0 = c % per_image * width;
      return {c / per_image, 1, p0, std::min(positions, p0 + width)};
    }
    return {c * images, std::min(images, batch - c * images), 0, positions};
  }
};

// The chunk's columns [taps tap0..tap1, chunk.columns()], image after image.
template <typename scalar_t>
void chunk_columns(const scalar_t* input, int64_t groups, int64_t group, const ConvShape& s,
                   const Chunks::Chunk& chunk, int64_t tap0, int64_t tap1, scalar_t* columns) {
  for (int64_t j = 0; j < chunk.count; ++j)
    im2col(input + ((chunk.image + j) * groups + group) * s.input_block(),
           columns + j * (chunk.p1 - chunk.p0), chunk.columns(), s, tap0, tap1, chunk.p0, chunk.p1);
}

// grad_output's block [out_channels, chunk.columns()] of the chunk: in place when it is one
// image's, else copied into a buffer.
template <typename scalar_t>
Strided<scalar_t> chunk_grad_output(const scalar_t* grad_output, int64_t groups, int64_t group,
                                    const ConvShape& s, const Chunks::Chunk& chunk) {
  const int64_t positions = s.positions();
  const auto block = [&](int64_t j) {
    return grad_output + ((chunk.image + j) * groups + group) * s.output_block();
  };
  if (chunk.count == 1) return {block(0) + chunk.p0, positions, 1};
  scalar_t* copy = scratch<scalar_t>(Scratch::kBlock, s.out_channels * chunk.columns());
  for (int64_t j = 0; j < chunk.count; ++j)
    for (int64_t oc = 0; oc < s.out_channels; ++oc)
      std::copy_n(block(j) + oc * positions, positions,
                  copy + oc * chunk.columns() + j * positions);
  return {copy, chunk.columns(), 1};
}

}  // namespace

template <typename scalar_t>
void im2col_forward(const scalar_t* input, const scalar_t* weight, const scalar_t* bias,
                    scalar_t* output, int64_t batch, int64_t groups, const ConvShape& s) {
  const int64_t positions = s.positions();
  const Chunks chunks = Chunks::of<scalar_t>(s, batch);
  const WeightAsA<scalar_t> weights(weight, groups, s, chunks.count);
  run_conv_tasks(groups * chunks.count, s.multiply_adds() * chunks.width / positions, [&](int64_t task) {
    const int64_t group = task / chunks.count;
    const Chunks::Chunk chunk = chunks[task % chunks.count];
    const auto out = [&](int64_t j) {
      return output + ((chunk.image + j) * groups + group) * s.output_block();
    };
    const scalar_t* image = input + (chunk.image * groups + group) * s.input_block();
    // one image's positions: straight into the output, after the bias
    if (chunk.count == 1) {
      if (bias)
        for (int64_t oc = 0; oc < s.out_channels; ++oc)
          std::fill(out(0) + oc * positions + chunk.p0, out(0) + oc * positions + chunk.p1,
                    bias[group * s.out_channels + oc]);
      const scalar_t* columns = image + chunk.p0;  // a 1x1's columns: the input itself
      int64_t ld = positions;
      if (!pointwise(s)) {
        scalar_t* unrolled = scratch<scalar_t>(Scratch::kColumns, s.taps() * chunk.columns());
        chunk_columns(input, groups, group, s, chunk, 0, s.taps(), unrolled);
        columns = unrolled, ld = chunk.columns();
      }
      return weights.product(group, [&](const auto& w) {
        gemm::gemm(s.out_channels, chunk.columns(), s.taps(), w,
                   gemm::PackB<scalar_t>{{columns, ld, 1}}, out(0) + chunk.p0, positions,
                   bias != nullptr);
      });
    }
    // whole planes of several images: one product into a buffer, then out image by image
    scalar_t* columns = scratch<scalar_t>(Scratch::kColumns, s.taps() * chunk.columns());
    scalar_t* product = scratch<scalar_t>(Scratch::kBlock, s.out_channels * chunk.columns());
    chunk_columns(input, groups, group, s, chunk, 0, s.taps(), columns);
    weights.product(group, [&](const auto& w) {
      gemm::gemm(s.out_channels, chunk.columns(), s.taps(), w,
                 gemm::PackB<scalar_t>{{columns, chunk.columns(), 1}}, product, chunk.columns());
    });
    for (int64_t j = 0; j < chunk.count; ++j)
      for (int64_t oc = 0; oc < s.out_channels; ++oc) {
        const scalar_t* from = product + oc * chunk.columns() + j * positions;
        scalar_t* to = out(j) + oc * positions;
        const scalar_t channel_bias = bias ? bias[group * s.out_channels + oc] : scalar_t(0);
        for (int64_t p = 0; p < positions; ++p) to[p] = from[p] + channel_bias;
      }
  });
}

template <typename scalar_t>
void im2col_grad_input(const scalar_t* grad_output, const scalar_t* weight, scalar_t* grad_input,
                       int64_t batch, int64_t groups, const ConvShape& s) {
  const int64_t kernel = s.kernel_h * s.kernel_w, plane = s.in_h * s.in_w;
  const Chunks chunks = Chunks::of<scalar_t>(s, batch);
  // Tasks write disjoint parts of grad_input: whole chunks of whole images, or, where an image
  // has several chunks (whose patches overlap), the image's chunks in order for a range of input
  // channels, as many ranges as the threads need.
  const int64_t items = chunks.count / chunks.per_image;
  const int64_t parts = parts_per_item(groups * items, s.channels);
  run_conv_tasks(groups * items * parts, batch * s.multiply_adds() / (items * parts), [&](int64_t task) {
    const int64_t group = task / (items * parts), item = task / parts % items, part = task % parts;
    const scalar_t* w = weight + group * s.weight_block();
    const int64_t c0 = part * s.channels / parts, c1 = (part + 1) * s.channels / parts;
    const int64_t tap0 = c0 * kernel, tap1 = c1 * kernel;
    for (int64_t c = item * chunks.per_image; c < (item + 1) * chunks.per_image; ++c) {
      const Chunks::Chunk chunk = chunks[c];
      const Strided<scalar_t> g = chunk_grad_output(grad_output, groups, group, s, chunk);
      scalar_t* columns = scratch<scalar_t>(Scratch::kColumns, (tap1 - tap0) * chunk.columns());
      gemm::gemm(tap1 - tap0, chunk.columns(), s.out_channels,  // weight^T read as stored
                 Strided<scalar_t>{w + tap0, 1, s.taps()}, g, columns, chunk.columns());
      for (int64_t j = 0; j < chunk.count; ++j) {
        scalar_t* image = grad_input + ((chunk.image + j) * groups + group) * s.input_block();
        if (chunk.p0 == 0) std::fill(image + c0 * plane, image + c1 * plane, scalar_t(0));
        col2im(columns + j * (chunk.p1 - chunk.p0), chunk.columns(), image, s, tap0, tap1,
               chunk.p0, chunk.p1);
      }
    }
  });
}

template <typename scalar_t>
void im2col_grad_weight(const scalar_t* grad_output, const scalar_t* input, scalar_t* grad_weight,
                        int64_t batch, int64_t groups, const ConvShape& s) {
  using Tile = gemm::Tile<scalar_t>;
  const Chunks chunks = Chunks::of<scalar_t>(s, batch);
  // Up to kFewUses panels of output channels, grad_weight^T = columns x grad_output^T: the GEMM
  // reads the columns in place (k along memory) where the other way round it transposes them into
  // panels for a product only out_channels tall, and a tap tile of 14 fills where 32 or 64
  // channels did not (1 thread, CPU time: 16->32 3x3/2 @32 b32 1.18x, 32->32 3x3 @16 1.23x,
  // 64->128 3x3/2 @56 b32 1.08x, the stem 1.14x). The sums go to a buffer at most the weight's
  // size, bounded like the columns.
  const bool transposed =
      s.out_channels <= Tile::kFewUses * Tile::kCols &&
      s.weight_block() * int64_t(sizeof(scalar_t)) <= 2 * kColumnsBytes;
  // each thread a range of taps (whole panels, or whole tiles transposed), summing over every
  // chunk in order
  const int64_t unit = transposed ? Tile::kRows : Tile::kCols;
  const int64_t units = (s.taps() + unit - 1) / unit;
  const int64_t parts = std::min(units, parts_per_item(groups, units));
  run_conv_tasks(groups * parts, batch * s.multiply_adds() / parts, [&](int64_t task) {
    const int64_t group = task / parts, part = task % parts;
    const int64_t tap0 = std::min(s.taps(), part * units / parts * unit);
    const int64_t tap1 = std::min(s.taps(), (part + 1) * units / parts * unit);
    if (tap0 >= tap1) return;
    scalar_t* gw = grad_weight + group * s.weight_block() + tap0;
    std::vector<scalar_t> sums(transposed ? (tap1 - tap0) * s.out_channels : 0);
    for (int64_t c = 0; c < chunks.count; ++c) {
      const Chunks::Chunk chunk = chunks[c];
      const Strided<scalar_t> g = chunk_grad_output(grad_output, groups, group, s, chunk);
      scalar_t* columns = scratch<scalar_t>(Scratch::kColumns, (tap1 - tap0) * chunk.columns());
      chunk_columns(input, groups, group, s, chunk, tap0, tap1, columns);
      if (transposed)  // grad_weight^T = columns x grad_output^T, the columns read in place
        gemm::gemm(tap1 - tap0, s.out_channels, chunk.columns(),
                   Strided<scalar_t>{columns, chunk.columns(), 1},
                   Strided<scalar_t>{g.data, g.col, g.row}, sums.data(), s.out_channels, c > 0);
      else  // columns^T read as stored
        gemm::gemm(s.out_channels, tap1 - tap0, chunk.columns(), g,
                   Strided<scalar_t>{columns, 1, chunk.columns()}, gw, s.taps(), c > 0);
    }
    if (transposed)
      for (int64_t oc = 0; oc < s.out_channels; ++oc)
        for (int64_t tap = 0; tap < tap1 - tap0; ++tap)
          gw[oc * s.taps() + tap] = sums[tap * s.out_channels + oc];
    else if (chunks.count == 0)  // no images
      for (int64_t oc = 0; oc < s.out_channels; ++oc)
        std::fill(gw + oc * s.taps(), gw + oc * s.taps() + (tap1 - tap0), scalar_t(0));
  });
}

LENET_EXT_CONV2D_FORWARD(im2col_forward)
LENET_EXT_CONV2D_GRAD(im2col_grad_input)
LENET_EXT_CONV2D_GRAD(im2col_grad_weight)

}  // namespace lenet_ext::cpu::conv2d
