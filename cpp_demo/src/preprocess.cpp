#include "preprocess.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include <opencv2/imgproc.hpp>

namespace fineparser {

namespace {

// acc[k] = fma(w, x[k], acc[k]): one step of the sequential fused multiply-add sum that OpenBLAS's
// sgemm kernels compute for numpy's matmul. std::fma is exact everywhere; on x86-64 a copy compiled
// for AVX2+FMA is chosen at run time so that the loop becomes vector FMA instructions (the portable
// copy calls libm per element there). AArch64 (Jetson) has FMA in its base instruction set.
using AxpyFn = void (*)(float, const float*, float*, std::size_t);

void axpy_portable(float w, const float* __restrict x, float* __restrict acc, std::size_t n) {
  for (std::size_t k = 0; k < n; ++k) acc[k] = std::fma(w, x[k], acc[k]);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("avx2,fma"))) void axpy_fma(float w, const float* __restrict x, float* __restrict acc,
                                                  std::size_t n) {
  for (std::size_t k = 0; k < n; ++k) acc[k] = __builtin_fmaf(w, x[k], acc[k]);
}

AxpyFn choose_axpy() {
  __builtin_cpu_init();
  return (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) ? axpy_fma : axpy_portable;
}
#else
AxpyFn choose_axpy() { return axpy_portable; }
#endif

const AxpyFn kAxpy = choose_axpy();

// PIL stores each pass in a uint8 image: numpy's floor(x + 0.5) in float32, then clip to 0..255.
// Truncation equals floor for the non-negative sums here, and a negative one clips to 0 either way;
// it avoids a libm floor call per value on x86-64 without SSE4.1.
void round_and_clip(float* values, std::size_t n) {
  for (std::size_t k = 0; k < n; ++k) {
    const int level = static_cast<int>(values[k] + 0.5f);
    values[k] = static_cast<float>(std::min(std::max(level, 0), 255));
  }
}

// out row i = sum over the filter's support of w * in row j (rows of `width` floats), then rounded.
void apply_filter(const TriangleFilter& filter, const cv::Mat& in, cv::Mat& out, int begin, int end) {
  const auto width = static_cast<std::size_t>(in.cols);
  for (int i = begin; i < end; ++i) {
    float* dst = out.ptr<float>(i - begin);
    std::fill(dst, dst + width, 0.0f);
    const float* w = filter.weights.data() + filter.offset[i];
    for (int k = 0; k < filter.count[i]; ++k) kAxpy(w[k], in.ptr<float>(filter.first[i] + k), dst, width);
    round_and_clip(dst, width);
  }
}

// Box reduction steps over one output row (restrict: uint8 pointers may alias anything otherwise,
// which keeps the compiler from vectorising).
void copy_row(const std::uint8_t* __restrict row, std::uint16_t* __restrict columns, std::size_t n) {
  for (std::size_t v = 0; v < n; ++v) columns[v] = row[v];
}

void add_rows(const std::uint8_t* __restrict first, const std::uint8_t* __restrict second,
              std::uint16_t* __restrict columns, std::size_t n) {
  for (std::size_t v = 0; v < n; ++v) columns[v] = static_cast<std::uint16_t>(first[v] + second[v]);
}

void add_row(const std::uint8_t* __restrict row, std::uint16_t* __restrict columns, std::size_t n) {
  for (std::size_t v = 0; v < n; ++v) columns[v] = static_cast<std::uint16_t>(columns[v] + row[v]);
}

// sums[x * C + c] = sum over k < factor_x of columns[(x * factor_x + k) * C + c]; C known at compile
// time so that the per-pixel loop is straight-line code.
template <int C>
void sum_blocks(const std::uint16_t* __restrict columns, std::int32_t* __restrict sums, int out_w, int factor_x) {
  for (int x = 0; x < out_w; ++x) {
    const std::uint16_t* block = columns + static_cast<std::size_t>(x) * factor_x * C;
    std::int32_t acc[C] = {};
    for (int k = 0; k < factor_x; ++k) {
      for (int c = 0; c < C; ++c) acc[c] += block[k * C + c];
    }
    for (int c = 0; c < C; ++c) sums[static_cast<std::size_t>(x) * C + c] = acc[c];
  }
}

void sum_blocks(const std::uint16_t* columns, std::int32_t* sums, int out_w, int factor_x, int channels) {
  if (channels == 3) return sum_blocks<3>(columns, sums, out_w, factor_x);
  if (channels == 1) return sum_blocks<1>(columns, sums, out_w, factor_x);
  if (channels == 4) return sum_blocks<4>(columns, sums, out_w, factor_x);
  throw std::invalid_argument("box_reduce handles 1, 3 or 4 channels, got " + std::to_string(channels));
}

void round_block_means(const std::int32_t* __restrict sums, std::uint8_t* __restrict out, std::size_t n, float scale,
                       bool opencv_2x2) {
  if (opencv_2x2) {
    for (std::size_t v = 0; v < n; ++v) out[v] = static_cast<std::uint8_t>((sums[v] + 2) >> 2);
    return;
  }
  // saturate_cast<uchar>(sum * scale): the float product rounded half to even. Adding 2^23 rounds a
  // float in [0, 2^22) to an integer in the default rounding mode, without a libm call.
  for (std::size_t v = 0; v < n; ++v) {
    const float rounded = (static_cast<float>(sums[v]) * scale + 8388608.0f) - 8388608.0f;
    out[v] = static_cast<std::uint8_t>(std::min(rounded, 255.0f));
  }
}

}  // namespace

void box_reduce(const cv::Mat& src, cv::Mat& dst, int factor_x, int factor_y) {
  const int channels = src.channels();
  const int out_w = src.cols / factor_x, out_h = src.rows / factor_y;
  if (src.depth() != CV_8U || out_w < 1 || out_h < 1 || src.cols % factor_x || src.rows % factor_y) {
    throw std::invalid_argument("box_reduce needs a uint8 image whose sides the factors divide");
  }
  if (factor_y > 257) throw std::invalid_argument("box_reduce sums at most 257 rows (uint16 column sums)");
  dst.create(out_h, out_w, src.type());
  const auto row_values = static_cast<std::size_t>(src.cols) * channels;
  const auto out_values = static_cast<std::size_t>(out_w) * channels;
  const float scale = 1.f / static_cast<float>(factor_x * factor_y);
  // OpenCV reduces 2x2 blocks of 1-, 3- and 4-channel images with SIMD code that rounds halves up.
  const bool opencv_2x2 = factor_x == 2 && factor_y == 2 && (channels == 1 || channels == 3 || channels == 4);
  std::vector<std::uint16_t> columns(row_values);
  std::vector<std::int32_t> sums(out_values);
  for (int y = 0; y < out_h; ++y) {
    const std::uint8_t* top = src.ptr<std::uint8_t>(y * factor_y);
    if (factor_y == 1) {
      copy_row(top, columns.data(), row_values);
    } else {
      add_rows(top, src.ptr<std::uint8_t>(y * factor_y + 1), columns.data(), row_values);
    }
    for (int r = 2; r < factor_y; ++r) add_row(src.ptr<std::uint8_t>(y * factor_y + r), columns.data(), row_values);
    sum_blocks(columns.data(), sums.data(), out_w, factor_x, channels);
    round_block_means(sums.data(), dst.ptr<std::uint8_t>(y), out_values, scale, opencv_2x2);
  }
}

double numpy_pairwise_sum(const double* values, std::size_t n) {
  // numpy/_core/src/umath/loops_utils.h.src, @TYPE@_pairwise_sum with PW_BLOCKSIZE 128.
  if (n < 8) {
    double res = 0.0;
    for (std::size_t i = 0; i < n; ++i) res += values[i];
    return res;
  }
  if (n <= 128) {
    double r[8];
    for (int j = 0; j < 8; ++j) r[j] = values[j];
    std::size_t i = 8;
    for (; i < n - (n % 8); i += 8) {
      for (int j = 0; j < 8; ++j) r[j] += values[i + j];
    }
    double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; ++i) res += values[i];
    return res;
  }
  std::size_t n2 = n / 2;
  n2 -= n2 % 8;
  return numpy_pairwise_sum(values, n2) + numpy_pairwise_sum(values + n2, n - n2);
}

std::vector<float> TriangleFilter::dense() const {
  std::vector<float> matrix(static_cast<std::size_t>(out_size) * in_size, 0.0f);
  for (int i = 0; i < out_size; ++i) {
    for (int k = 0; k < count[i]; ++k) {
      matrix[static_cast<std::size_t>(i) * in_size + first[i] + k] = weights[offset[i] + k];
    }
  }
  return matrix;
}

TriangleFilter triangle_filter(int in_size, int out_size, double scale) {
  if (in_size < 1 || out_size < 1) {
    throw std::invalid_argument("triangle filter needs positive sizes, got " + std::to_string(in_size) + " -> " +
                                std::to_string(out_size));
  }
  TriangleFilter filter;
  filter.in_size = in_size;
  filter.out_size = out_size;
  filter.scale = scale;
  // Each expression below is evaluated in the order numpy evaluates _triangle_weights.
  const double filter_scale = std::max(scale, 1.0);
  std::vector<double> row(static_cast<std::size_t>(in_size));
  for (int i = 0; i < out_size; ++i) {
    const double centre = (static_cast<double>(i) + 0.5) * scale;
    const std::int64_t first = std::max<std::int64_t>(static_cast<std::int64_t>(centre - filter_scale + 0.5), 0);
    const std::int64_t stop = std::min<std::int64_t>(static_cast<std::int64_t>(centre + filter_scale + 0.5), in_size);
    std::fill(row.begin(), row.end(), 0.0);
    for (std::int64_t j = first; j < stop; ++j) {
      const double w = 1.0 - std::fabs((static_cast<double>(j) - centre + 0.5) / filter_scale);
      row[static_cast<std::size_t>(j)] = w > 0.0 ? w : 0.0;
    }
    // numpy normalises with the pairwise sum of the whole dense row, zeros included.
    const double total = numpy_pairwise_sum(row.data(), row.size());
    filter.first.push_back(static_cast<int>(first));
    filter.count.push_back(static_cast<int>(std::max<std::int64_t>(stop - first, 0)));
    filter.offset.push_back(filter.weights.size());
    for (std::int64_t j = first; j < stop; ++j) {
      filter.weights.push_back(static_cast<float>(row[static_cast<std::size_t>(j)] / total));
    }
  }
  return filter;
}

// Twin of fineparser.preprocess._reduction_factor; with box_reduce, of box_reduce_frame (the Python capture
// thread keeps that reduction for the spotter's input too; this demo has no spotter, so it only resizes on).
int reduction_factor(int in_size, int out_size) {
  const double shrink = static_cast<double>(in_size) / out_size / kReducingGap;
  int factor = std::max(static_cast<int>(shrink), 1);
  // An exact divisor keeps the box grid aligned with the frame (1920, 1080, 720, ... all have one).
  while (in_size % factor != 0) --factor;
  return factor;
}

int center_crop_top(int height, int size) {
  if (height < size) {
    throw std::invalid_argument("cannot crop " + std::to_string(size) + " rows out of " + std::to_string(height));
  }
  // Python's round() rounds half to even, as std::nearbyint does in the default rounding mode.
  return static_cast<int>(std::nearbyint((height - size) / 2.0));
}

std::vector<std::int64_t> sample_frame_indices(std::int64_t first, std::int64_t last, int num,
                                               std::int64_t end_shift) {
  const std::int64_t stop = last + end_shift;
  if (stop < first) {
    throw std::invalid_argument("clip ends (" + std::to_string(last) + (end_shift >= 0 ? "+" : "") +
                                std::to_string(end_shift) + ") before it starts (" + std::to_string(first) + ")");
  }
  if (num < 0) throw std::invalid_argument("cannot sample a negative number of frames");
  // numpy.linspace: step = (stop - start) / (num - 1); y = arange(num) * step + start; y[-1] = stop.
  std::vector<std::int64_t> indices(static_cast<std::size_t>(num));
  const double start = static_cast<double>(first);
  const double delta = static_cast<double>(stop) - start;
  const int div = num - 1;
  for (int i = 0; i < num; ++i) {
    double y;
    if (div > 0) {
      const double step = delta / div;
      // A zero step is computed as i / div * delta by numpy (all zeros here either way).
      y = step == 0.0 ? static_cast<double>(i) / div * delta : static_cast<double>(i) * step;
    } else {
      y = static_cast<double>(i) * delta;
    }
    y = y + start;
    if (div > 0 && i == num - 1) y = static_cast<double>(stop);
    indices[static_cast<std::size_t>(i)] = static_cast<std::int64_t>(y);  // astype(int64) truncates
  }
  return indices;
}

const TriangleFilter& FramePreprocessor::filter(int in_size, int out_size, double scale) {
  const auto key = std::make_tuple(in_size, out_size, scale);
  auto found = filters_.find(key);
  if (found == filters_.end()) found = filters_.emplace(key, triangle_filter(in_size, out_size, scale)).first;
  return found->second;
}

cv::Mat FramePreprocessor::resample(const cv::Mat& image, int out_h, int out_w, int row_begin, int row_end) {
  if (image.depth() != CV_8U || (image.channels() != 1 && image.channels() != 3)) {
    throw std::invalid_argument("expected an HxW or HxWx3 uint8 image, got OpenCV type " +
                                std::to_string(image.type()));
  }
  if (image.empty()) throw std::invalid_argument("cannot resize an empty image");
  if (row_begin < 0 || row_end > out_h || row_begin >= row_end) {
    throw std::invalid_argument("output rows [" + std::to_string(row_begin) + ", " + std::to_string(row_end) +
                                ") are not inside 0.." + std::to_string(out_h));
  }
  const int channels = image.channels();
  int in_h = image.rows, in_w = image.cols;
  const int factor_x = reduction_factor(in_w, out_w), factor_y = reduction_factor(in_h, out_h);
  double scale_x = static_cast<double>(in_w) / out_w, scale_y = static_cast<double>(in_h) / out_h;
  const cv::Mat* pixels = &image;
  if (factor_x != 1 || factor_y != 1) {
    // The Python side calls cv2.resize(INTER_AREA) with these integer factors; box_reduce is that
    // arithmetic without OpenCV's per-pixel offset tables (several times faster, same bytes).
    box_reduce(image, reduced_, factor_x, factor_y);
    pixels = &reduced_;
    scale_x = static_cast<double>(in_w) / out_w / factor_x;
    scale_y = static_cast<double>(in_h) / out_h / factor_y;
    in_w /= factor_x;
    in_h /= factor_y;
  }
  // Horizontal pass with columns leading: (W, H*C) -> (out_w, H*C), as numpy does it.
  cv::transpose(*pixels, transposed_);
  transposed_.convertTo(columns_, CV_32F);
  columns_ = columns_.reshape(1, in_w);
  half_.create(out_w, in_h * channels, CV_32F);
  apply_filter(filter(in_w, out_w, scale_x), columns_, half_, 0, out_w);
  // Vertical pass with rows leading: (H, out_w*C) -> (out_h, out_w*C), already HxWxC order.
  cv::transpose(half_.reshape(channels, out_w), rows_);
  rows_ = rows_.reshape(1, in_h);
  full_.create(row_end - row_begin, out_w * channels, CV_32F);
  apply_filter(filter(in_h, out_h, scale_y), rows_, full_, row_begin, row_end);
  cv::Mat out;
  full_.reshape(channels, row_end - row_begin).convertTo(out, CV_8U);
  return out;
}

cv::Mat FramePreprocessor::resize_frame(const cv::Mat& frame) {
  if (frame.channels() != 3) {
    throw std::invalid_argument("expected an HxWx3 frame, got " + std::to_string(frame.channels()) + " channel(s)");
  }
  return resample(frame, kResizeHeight, kResizeWidth, 0, kResizeHeight);
}

cv::Mat FramePreprocessor::prepare_frame(const cv::Mat& frame_rgb) {
  if (frame_rgb.channels() != 3) {
    throw std::invalid_argument("expected an HxWx3 frame, got " + std::to_string(frame_rgb.channels()) +
                                " channel(s)");
  }
  // Only the cropped rows are filtered: each output row depends on nothing else, so they equal the
  // rows Python crops out of the full 200-row image.
  const int top = center_crop_top(kResizeHeight);
  return resample(frame_rgb, kResizeHeight, kResizeWidth, top, top + kFrameSize);
}

void FramePreprocessor::prepare_frame_bgr(const cv::Mat& frame_bgr, std::uint8_t* out) {
  const cv::Mat prepared = prepare_frame(frame_bgr);
  cv::Mat rgb(kFrameSize, kFrameSize, CV_8UC3, out);
  // The filter treats channels alike, so swapping after the resize equals swapping before (cheaper).
  cv::cvtColor(prepared, rgb, cv::COLOR_BGR2RGB);
}

}  // namespace fineparser
