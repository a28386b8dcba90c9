// Decoding a video file or stream with OpenCV's FFmpeg backend, with the stream time the Python
// capture thread assigns (runtime/sources.py, CaptureThread._video_frames).
#pragma once

#include <optional>
#include <stdexcept>
#include <string>

#include <opencv2/core.hpp>
#include <opencv2/videoio.hpp>

namespace fineparser {

// A source that cannot be opened or read (the message names it).
class SourceError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class VideoFrames {
 public:
  // Opens a file or a network URL (rtsp://, udp://, ...); SourceError when it cannot.
  explicit VideoFrames(const std::string& source, double open_timeout_s = 10.0, double read_timeout_s = 5.0);
  // The next BGR frame and its stream time; false at the end of the stream.
  bool next(cv::Mat& frame_bgr, double& time);
  double fps() const { return fps_; }  // the container's rate, 25 when it does not say
  cv::Size size() const;

 private:
  std::string source_;
  cv::VideoCapture capture_;
  double fps_ = 25.0;
  long long index_ = 0;
  double shift_ = 0.0;
  double last_time_ = 0.0;
};

bool is_network_source(const std::string& source);

}  // namespace fineparser
