// Scoring a dive and the live loop around it, as runtime/scorer.py and runtime/cli.py do it:
// decode -> prepare_frame_bgr -> bounded frame buffer -> segmenter -> on a dive's end: 96 frames
// (linspace) -> encoder -> pair head against K exemplars of the dive number -> score event.
// The inference engine is behind Backend (TensorRT in fineparser_demo; a test double in the tool).
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <vector>

#include "events.hpp"
#include "package.hpp"
#include "preprocess.hpp"
#include "segments.hpp"

namespace fineparser {

// Step names of the explanation (fineparser.spec.STEP_NAMES).
const std::vector<std::string>& step_names();

extern const char* const kNoDiveNumberNote;

// Encoder outputs of one clip (encoder.onnx's outputs, batch 1).
struct QueryFeatures {
  std::vector<float> window_features;     // [1, windows, D]
  std::vector<std::int64_t> transitions;  // [1, 2]
  std::vector<float> transition_probs;    // [1, 96, 2]
  std::vector<float> static_tokens;       // [1, 12, T]
};

// Pair-head outputs for K exemplars.
struct PairOutputs {
  std::vector<float> delta;        // [K]
  std::vector<float> step_deltas;  // [K, 3]
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;         // e.g. "tensorrt"
  virtual std::string description() const = 0;  // e.g. "tensorrt 10.3.0 (C++ fineparser_demo)"
  // frames: uint8 [1, 96, 112, 112, 3] RGB, row-major.
  virtual QueryFeatures encode(const std::vector<std::uint8_t>& frames) = 0;
  // The query against the bank rows `indices` (K = indices.size()).
  virtual PairOutputs pair_head(const QueryFeatures& query, const ExemplarBank& bank,
                                const std::vector<std::int64_t>& indices) = 0;
};

// Exemplars for a dive number (none: any dive, with kNoDiveNumberNote), as DiveScorer.exemplars.
Selection choose_exemplars(const ExemplarBank& bank, const std::optional<std::string>& dive_number, int voter_number);

// Per-exemplar mean over a dive's segments of the pair head's outputs, in float64
// (fineparser.scoring.mean_pair_outputs; one segment: its outputs widened).
struct MeanPairOutputs {
  std::vector<double> delta;        // [K]
  std::vector<double> step_deltas;  // [K, 3]
};
MeanPairOutputs mean_pair_outputs(const std::vector<PairOutputs>& outputs);

// Seconds per frame of a run of stream times: the median step, np.median's way (0 with fewer than 2 frames).
double frame_interval(const std::vector<double>& times);

// The score event's fields (runtime.scorer.DiveScorer.score) from what the backend returned.
// frame_times: stream times of every buffered frame of the dive, in order; transitions: of the dive's
// segment as found; pair: the mean over the `segments` segments scored.
Json score_event(const Dive& dive, const std::vector<double>& frame_times,
                 const std::vector<std::int64_t>& transitions, const ExemplarBank& bank, const Selection& selection,
                 const MeanPairOutputs& pair, int segments, const std::string& backend, double latency_ms);

struct CapturedFrame {
  std::int64_t seq = 0;
  double time = 0.0;  // stream time in seconds
  std::vector<std::uint8_t> frame;  // 112x112x3 RGB model frame
};

struct RunOptions {
  std::string source;
  std::string segment = "clip";
  std::optional<std::string> dive_number;  // for dives whose timecodes do not name one
  std::size_t buffer_frames = 3000;        // the Python runtime's 60 s at up to 50 fps
  int voter_number = 10;
  EdgeOffsets edge_offsets;  // the package's scoring.edge_offsets_s (Package::edge_offsets)
};

struct RunReport {
  std::int64_t frames = 0;
  std::int64_t corrupt = 0;
  int dives = 0;
  int scored = 0;
  std::vector<double> prepare_ms;  // per-frame preprocessing cost (of the last 10000 frames)
};

// Decode the source, segment it and score every dive; events go to `events`. Throws SourceError,
// SegmentError or PackageError on bad input before the first frame.
RunReport run_source(const RunOptions& options, Backend& backend, const ExemplarBank& bank, EventWriter& events);

}  // namespace fineparser
