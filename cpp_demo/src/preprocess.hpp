// Frame preprocessing and frame sampling, the same arithmetic as fineparser/preprocess.py.
//
// A source frame (any size, BGR as OpenCV decodes it) becomes a 112x112x3 uint8 RGB model frame:
//  1. frames more than REDUCING_GAP times larger than 112x200 are box-reduced by an integer factor
//     with OpenCV's INTER_AREA (the same OpenCV call as the Python side);
//  2. PIL's antialiased bilinear (triangle) filter, horizontal pass, round half up, clip to 0..255;
//  3. the same filter vertically, rounded the same way, to 200x112 (aspect not kept);
//  4. centre crop 112x112 (top 44), channels swapped BGR -> RGB.
// Filter weights are computed in double exactly as numpy does (including numpy's pairwise row sum
// used to normalise them) and stored as float; each output is a sequence of fused multiply-adds over
// its inputs in increasing order, which is what OpenBLAS's sgemm computes for numpy's matmul except in
// its small-matrix dot-product kernel, whose sums can differ in the last bit and so round a value at
// x.5 the other way. The result equals the Python preprocessing byte for byte apart from such isolated
// one-level differences; tests/test_cpp_demo.py allows at most one level on at most 0.1 % of the bytes
// (MAX_LEVEL_DIFF, MAX_DIFF_FRACTION) and prints how many differ.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <tuple>
#include <vector>

#include <opencv2/core.hpp>

namespace fineparser {

constexpr int kNumFrames = 96;      // frames sampled from one dive
constexpr int kFrameSize = 112;     // model frames are kFrameSize x kFrameSize RGB
constexpr int kResizeHeight = 200;  // every frame is resized to 200 x 112 (h x w) before the crop
constexpr int kResizeWidth = 112;
constexpr double kReducingGap = 2.5;
constexpr std::size_t kFrameBytes = static_cast<std::size_t>(kFrameSize) * kFrameSize * 3;

// numpy's pairwise summation of a contiguous float64 array (np.sum, np.mean along the fast axis).
double numpy_pairwise_sum(const double* values, std::size_t n);

// The triangle filter from `in_size` inputs to `out_size` outputs: output i reads inputs
// [first[i], first[i] + count[i]) with weights[offset[i] ...] (float, as numpy's bands store them).
struct TriangleFilter {
  int in_size = 0;
  int out_size = 0;
  double scale = 1.0;
  std::vector<int> first;
  std::vector<int> count;
  std::vector<std::size_t> offset;
  std::vector<float> weights;

  // Dense [out_size, in_size] float matrix (zeros outside each output's support); for tests.
  std::vector<float> dense() const;
};

// OpenCV's INTER_AREA resize by integer factors that divide the sides (resizeAreaFast): each output is
// the block's integer sum times 1.f/area rounded half to even; 2x2 blocks round halves up as OpenCV's
// SIMD path does. Byte-identical to cv::resize(src, dst, size / factors, 0, 0, INTER_AREA).
void box_reduce(const cv::Mat& src, cv::Mat& dst, int factor_x, int factor_y);

// PIL's antialiased bilinear filter as fineparser.preprocess._triangle_weights builds it.
TriangleFilter triangle_filter(int in_size, int out_size, double scale);

// Largest integer factor <= (in_size / out_size / kReducingGap) that divides in_size (1: none).
int reduction_factor(int in_size, int out_size);

// Top row of the centre crop: int(round((height - size) / 2)) as torchvision computes it.
int center_crop_top(int height, int size = kFrameSize);

// Frame numbers linspace(first, last + end_shift, num).astype(int64), exactly as numpy computes them.
std::vector<std::int64_t> sample_frame_indices(std::int64_t first, std::int64_t last, int num = kNumFrames,
                                               std::int64_t end_shift = 0);

// Resizes and crops frames; keeps filters and scratch buffers between calls (one per thread).
class FramePreprocessor {
 public:
  // HxWx3 (or HxWx1) uint8 -> out_h x out_w, rows [row_begin, row_end) only, same channel order.
  cv::Mat resample(const cv::Mat& image, int out_h, int out_w, int row_begin, int row_end);
  // HxWx3 uint8 -> 200x112x3 (fineparser.preprocess.resize_frame; channel order kept).
  cv::Mat resize_frame(const cv::Mat& frame);
  // HxWx3 uint8 RGB -> 112x112x3 uint8 RGB (prepare_frame).
  cv::Mat prepare_frame(const cv::Mat& frame_rgb);
  // HxWx3 uint8 BGR (as OpenCV decodes) -> 112x112x3 uint8 RGB (prepare_frame_bgr), written to `out`
  // (kFrameBytes bytes, row-major HWC).
  void prepare_frame_bgr(const cv::Mat& frame_bgr, std::uint8_t* out);

 private:
  const TriangleFilter& filter(int in_size, int out_size, double scale);

  std::map<std::tuple<int, int, double>, TriangleFilter> filters_;
  cv::Mat reduced_, transposed_, columns_, half_, rows_, full_;
};

}  // namespace fineparser
