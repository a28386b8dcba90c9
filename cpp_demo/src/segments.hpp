// Dive segmentation as runtime/segments.py does it: the whole source is one dive (clip), or dives at
// known stream times read from a timecodes file (CSV start,end[,dive_number] or JSON).
#pragma once

#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace fineparser {

// A timecodes file or --segment value that cannot be used (the message names file and line).
class SegmentError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct Dive {
  int index = 0;  // 1, 2, ... in stream order
  double start = 0.0;
  std::optional<double> end;
  std::optional<std::string> dive_number;
  std::optional<double> ground_truth_score;
  std::string source;  // what decided the boundaries
  std::optional<std::string> incomplete_reason;  // why the dive was cut short (none: seen whole), as Python's
};

struct SegmentEvent {
  enum class Kind { kStart, kEnd } kind;
  Dive* dive;  // owned by the segmenter
};

// runtime.segments.read_timecodes: dives sorted by start and numbered from 1.
std::vector<Dive> read_timecodes(const std::string& path);

class Segmenter {
 public:
  virtual ~Segmenter() = default;
  virtual std::string name() const = 0;
  // Called for every frame in stream order with its stream time.
  virtual std::vector<SegmentEvent> feed(double time) = 0;
  // Called once at the end of the stream; closes what is open.
  virtual std::vector<SegmentEvent> finish(std::optional<double> last_time, double frame_duration) = 0;
  // Dives whose start the stream never reached.
  virtual std::vector<Dive> unreached() const { return {}; }
};

// The whole source is one dive: it starts at the first frame and ends one frame after the last.
class ClipSegmenter : public Segmenter {
 public:
  std::string name() const override { return "clip"; }
  std::vector<SegmentEvent> feed(double time) override;
  std::vector<SegmentEvent> finish(std::optional<double> last_time, double frame_duration) override;

 private:
  std::unique_ptr<Dive> dive_;
};

// Dives at known stream times: a start when a frame reaches it, an end when a frame passes it.
class TimecodeSegmenter : public Segmenter {
 public:
  TimecodeSegmenter(std::vector<Dive> dives, std::string name);
  std::string name() const override { return name_; }
  std::vector<SegmentEvent> feed(double time) override;
  std::vector<SegmentEvent> finish(std::optional<double> last_time, double frame_duration) override;
  std::vector<Dive> unreached() const override;

 private:
  std::string name_;
  std::vector<std::unique_ptr<Dive>> dives_;
  std::size_t next_ = 0;     // first dive not started yet
  std::vector<Dive*> open_;  // started, not ended
};

// The segmenter named by --segment: "clip" or "timecodes:FILE" (operator mode is Python-only).
std::unique_ptr<Segmenter> make_segmenter(const std::string& text);

}  // namespace fineparser
