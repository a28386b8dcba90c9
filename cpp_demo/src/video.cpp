#include "video.hpp"

#include <filesystem>
#include <vector>

namespace fineparser {

bool is_network_source(const std::string& source) {
  for (const char* scheme : {"rtsp://", "rtsps://", "rtmp://", "rtmps://", "srt://", "udp://", "rtp://", "tcp://",
                             "http://", "https://"}) {
    if (source.rfind(scheme, 0) == 0) return true;
  }
  return false;
}

VideoFrames::VideoFrames(const std::string& source, double open_timeout_s, double read_timeout_s) : source_(source) {
  if (!is_network_source(source) && !std::filesystem::is_regular_file(source)) {
    throw SourceError("cannot open source " + source + ": no such file or URL (rtsp/rtmp/srt/udp/http)");
  }
  const std::vector<int> params = {cv::CAP_PROP_OPEN_TIMEOUT_MSEC, static_cast<int>(open_timeout_s * 1000),
                                   cv::CAP_PROP_READ_TIMEOUT_MSEC, static_cast<int>(read_timeout_s * 1000)};
  if (!capture_.open(source, cv::CAP_FFMPEG, params)) {
    throw SourceError("cannot open source " + source + ": not a readable video (OpenCV's FFmpeg backend refused it)");
  }
  const double fps = capture_.get(cv::CAP_PROP_FPS);
  fps_ = fps > 0 && fps < 1000 ? fps : 25.0;
}

cv::Size VideoFrames::size() const {
  return {static_cast<int>(capture_.get(cv::CAP_PROP_FRAME_WIDTH)),
          static_cast<int>(capture_.get(cv::CAP_PROP_FRAME_HEIGHT))};
}

bool VideoFrames::next(cv::Mat& frame_bgr, double& time) {
  if (!capture_.read(frame_bgr)) return false;
  // Container timestamps when the backend has them, else frame index / fps.
  double raw = capture_.get(cv::CAP_PROP_POS_MSEC) / 1000.0;
  if (index_ > 0 && raw <= 0) raw = static_cast<double>(index_) / fps_;
  double t = raw + shift_;
  if (index_ > 0 && t <= last_time_) {
    // Timestamps jumped back (a restarted sender, a wrap): stay monotonic at the frame rate.
    shift_ += last_time_ + 1.0 / fps_ - t;
    t = last_time_ + 1.0 / fps_;
  }
  last_time_ = t;
  ++index_;
  time = t;
  return true;
}

}  // namespace fineparser
