#include "scoring.hpp"

#include <algorithm>
#include <cstring>
#include <iostream>
#include <limits>

#include "video.hpp"

namespace fineparser {

const char* const kNoDiveNumberNote =
    "no dive number known for this dive (no start list, timecodes without dive numbers): using exemplars of any dive";

namespace {

using Clock = std::chrono::steady_clock;

constexpr std::size_t kTimedFrames = 10000;

double elapsed_ms(Clock::time_point since) {
  return std::chrono::duration<double, std::milli>(Clock::now() - since).count();
}

// np.mean of a 1-D float64 array: numpy's pairwise sum divided by the count.
double numpy_mean(const std::vector<double>& values) {
  return numpy_pairwise_sum(values.data(), values.size()) / static_cast<double>(values.size());
}

Json optional_text(const std::optional<std::string>& text) { return text ? Json(*text) : Json(); }

struct FrameBuffer {
  std::deque<CapturedFrame> frames;
  std::size_t capacity;

  void append(CapturedFrame frame) {
    if (frames.size() >= capacity) frames.pop_front();  // oldest first, as the Python ring buffer
    frames.push_back(std::move(frame));
  }
  std::vector<const CapturedFrame*> between(double start, double end) const {
    std::vector<const CapturedFrame*> out;
    for (const auto& frame : frames) {
      if (start <= frame.time && frame.time < end) out.push_back(&frame);
    }
    return out;
  }
};

class LiveLoop {
 public:
  LiveLoop(const RunOptions& options, Backend& backend, const ExemplarBank& bank, EventWriter& events)
      : options_(options), backend_(backend), bank_(bank), events_(events),
        segmenter_(make_segmenter(options.segment)), buffer_{{}, std::max<std::size_t>(options.buffer_frames, 2)} {}

  RunReport run() {
    VideoFrames video(options_.source);
    const std::string kind = is_network_source(options_.source) ? "network" : "file";
    cv::Mat frame;
    double time = 0.0;
    std::optional<double> last_time;
    while (video.next(frame, time)) {
      if (frame.empty() || frame.type() != CV_8UC3) {
        ++report_.corrupt;
        continue;
      }
      if (report_.frames == 0) {
        events_.publish("stream", {{"status", "opened"}, {"source", options_.source}, {"kind", kind},
                                   {"fps", python_round(video.fps(), 3)}, {"size", {frame.cols, frame.rows}}});
      }
      CapturedFrame captured;
      captured.seq = report_.frames;
      captured.time = time;
      captured.frame.resize(kFrameBytes);
      const auto started = Clock::now();
      preprocessor_.prepare_frame_bgr(frame, captured.frame.data());
      // A live stream runs for hours: keep the cost of the last kTimedFrames frames only.
      const double cost = elapsed_ms(started);
      if (report_.prepare_ms.size() < kTimedFrames) {
        report_.prepare_ms.push_back(cost);
      } else {
        report_.prepare_ms[static_cast<std::size_t>(report_.frames) % kTimedFrames] = cost;
      }
      buffer_.append(std::move(captured));
      ++report_.frames;
      last_time = time;
      for (const auto& event : segmenter_->feed(time)) on_segment(event);
    }
    events_.publish("stream", {{"status", "ended"}, {"source", options_.source}, {"frames", report_.frames},
                               {"dropped", 0}, {"corrupt", report_.corrupt}, {"reconnects", 0}, {"gap_s", 0.0},
                               {"error", report_.frames == 0 ? Json(no_frames_message()) : Json()}});
    for (const auto& event : segmenter_->finish(last_time, 1.0 / video.fps())) on_segment(event);
    for (const auto& dive : segmenter_->unreached()) {
      std::cerr << "fineparser: dive " << dive.index << " (" << dive.start << "-" << dive.end.value_or(0.0)
                << " s) lies beyond the end of the stream: not scored\n";
    }
    if (report_.frames == 0) throw SourceError(no_frames_message());
    return report_;
  }

 private:
  std::string no_frames_message() const {
    return "cannot read source " + options_.source + ": no frame could be decoded";
  }

  void on_segment(const SegmentEvent& event) {
    Dive& dive = *event.dive;
    if (event.kind == SegmentEvent::Kind::kStart) {
      ++report_.dives;
      if (!dive.dive_number && options_.dive_number) dive.dive_number = options_.dive_number;
      events_.publish("dive_start", {{"dive", dive.index}, {"start_s", python_round(dive.start, 4)},
                                     {"dive_number", optional_text(dive.dive_number)},
                                     {"segmenter", segmenter_->name()}});
      return;
    }
    const auto ended_at = Clock::now();
    events_.publish("dive_end", {{"dive", dive.index}, {"start_s", python_round(dive.start, 4)},
                                 {"end_s", python_round(dive.end.value_or(0.0), 4)},
                                 {"dive_number", optional_text(dive.dive_number)},
                                 {"segmenter", segmenter_->name()}});
    const auto frames = buffer_.between(dive.start, dive.end.value_or(std::numeric_limits<double>::infinity()));
    // Frames just before the start, for the edge offsets that move it earlier (runtime/cli.py's margin).
    const double lead_s = options_.edge_offsets.lead_s();
    const auto lead = lead_s > 0 ? buffer_.between(dive.start - 2.0 * lead_s, dive.start)
                                 : std::vector<const CapturedFrame*>{};
    const double oldest = buffer_.frames.empty() ? dive.start : buffer_.frames.front().time;
    if (!buffer_.frames.empty() && oldest > dive.start + 1e-6) {
      char text[256];
      std::snprintf(text, sizeof text, "dive %d: frames before %.2f s were already dropped from the buffer (dive "
                    "starts at %.2f s); scoring the frames left", dive.index, oldest, dive.start);
      events_.publish("warning", {{"kind", "dive_truncated"}, {"dive", dive.index}, {"message", text}});
      if (!dive.incomplete_reason) {
        std::snprintf(text, sizeof text, "frames before %.2f s were already dropped from the buffer (the dive starts "
                      "at %.2f s)", oldest, dive.start);
        dive.incomplete_reason = text;
      }
    }
    if (dive.incomplete_reason) {  // a dive cut short is never presented as a final score
      events_.publish("warning", {{"kind", "dive_incomplete"}, {"dive", dive.index},
                                  {"message", "dive " + std::to_string(dive.index) + ": cut short (" +
                                                  *dive.incomplete_reason + "): its score is not final"}});
    }
    if (frames.empty()) {
      events_.publish("warning", {{"kind", "not_scored"}, {"dive", dive.index},
                                  {"message", "dive " + std::to_string(dive.index) +
                                                  ": no frames of the dive are in the buffer"}});
      return;
    }
    Json score;
    try {
      score = score_dive(dive, lead, frames, ended_at);
    } catch (const std::exception& exc) {  // a backend failing on one dive must not end the run
      events_.publish("warning", {{"kind", "not_scored"}, {"dive", dive.index},
                                  {"message", "dive " + std::to_string(dive.index) + ": the backend failed (" +
                                                  exc.what() + ")"}});
      return;
    }
    if (!score["exemplar_fallback"].is_null()) {
      events_.publish("warning", {{"kind", "exemplar_fallback"}, {"dive", dive.index},
                                  {"message", "dive " + std::to_string(dive.index) + ": " +
                                                  score["exemplar_fallback"].get<std::string>()}});
    }
    // Whether the dive was seen whole is the segmentation's to say (runtime/cli.py adds it at the same point).
    score["complete"] = !dive.incomplete_reason.has_value();
    if (dive.incomplete_reason) score["incomplete_reason"] = *dive.incomplete_reason;
    events_.publish("score", score);
    ++report_.scored;
  }

  Json score_dive(const Dive& dive, const std::vector<const CapturedFrame*>& lead,
                  const std::vector<const CapturedFrame*>& frames, Clock::time_point ended_at) {
    std::vector<const CapturedFrame*> both(lead);
    both.insert(both.end(), frames.begin(), frames.end());
    std::vector<double> both_times;
    for (const auto* frame : both) both_times.push_back(frame->time);
    const auto spans = options_.edge_offsets.spans(static_cast<std::int64_t>(lead.size()),
                                                   static_cast<std::int64_t>(frames.size()), frame_interval(both_times));
    const Selection selection = choose_exemplars(bank_, dive.dive_number, options_.voter_number);
    std::vector<PairOutputs> outputs;
    std::vector<std::int64_t> transitions;
    for (const auto& [lo, hi] : spans) {
      // Sampled over the segment from its own first frame, as sample_dive_frames(both[lo:hi + 1]) does.
      const auto sampled = sample_frame_indices(0, hi - lo, kNumFrames);
      std::vector<std::uint8_t> clip(sampled.size() * kFrameBytes);
      for (std::size_t i = 0; i < sampled.size(); ++i) {
        std::memcpy(clip.data() + i * kFrameBytes, both[static_cast<std::size_t>(lo + sampled[i])]->frame.data(),
                    kFrameBytes);
      }
      const QueryFeatures query = backend_.encode(clip);
      if (outputs.empty()) transitions = query.transitions;  // the dive as found: what the explanation shows
      outputs.push_back(backend_.pair_head(query, bank_, selection.indices));
    }
    std::vector<double> times;
    for (const auto* frame : frames) times.push_back(frame->time);
    return score_event(dive, times, transitions, bank_, selection, mean_pair_outputs(outputs),
                       static_cast<int>(spans.size()), backend_.description(), elapsed_ms(ended_at));
  }

  const RunOptions& options_;
  Backend& backend_;
  const ExemplarBank& bank_;
  EventWriter& events_;
  std::unique_ptr<Segmenter> segmenter_;
  FrameBuffer buffer_;
  FramePreprocessor preprocessor_;
  RunReport report_;
};

}  // namespace

const std::vector<std::string>& step_names() {
  static const std::vector<std::string> names = {"approach/take-off", "flight", "entry"};
  return names;
}

Selection choose_exemplars(const ExemplarBank& bank, const std::optional<std::string>& dive_number, int voter_number) {
  if (!dive_number || dive_number->empty()) {
    Selection selection = bank.select("", voter_number);
    selection.note = kNoDiveNumberNote;
    return selection;
  }
  return bank.select(*dive_number, voter_number);
}

MeanPairOutputs mean_pair_outputs(const std::vector<PairOutputs>& outputs) {
  if (outputs.empty()) throw std::runtime_error("no pair-head outputs to average");
  MeanPairOutputs mean;
  mean.delta.assign(outputs[0].delta.size(), 0.0);
  mean.step_deltas.assign(outputs[0].step_deltas.size(), 0.0);
  for (const auto& output : outputs) {
    if (output.delta.size() != mean.delta.size() || output.step_deltas.size() != mean.step_deltas.size()) {
      throw std::runtime_error("pair-head outputs of a dive's segments differ in size");
    }
    for (std::size_t i = 0; i < mean.delta.size(); ++i) mean.delta[i] += static_cast<double>(output.delta[i]);
    for (std::size_t i = 0; i < mean.step_deltas.size(); ++i) {
      mean.step_deltas[i] += static_cast<double>(output.step_deltas[i]);
    }
  }
  const auto n = static_cast<double>(outputs.size());
  for (auto& value : mean.delta) value /= n;
  for (auto& value : mean.step_deltas) value /= n;
  return mean;
}

double frame_interval(const std::vector<double>& times) {
  if (times.size() < 2) return 0.0;
  std::vector<double> steps;
  for (std::size_t i = 1; i < times.size(); ++i) steps.push_back(times[i] - times[i - 1]);
  std::sort(steps.begin(), steps.end());
  const std::size_t mid = steps.size() / 2;
  return steps.size() % 2 ? steps[mid] : (steps[mid - 1] + steps[mid]) / 2.0;
}

Json score_event(const Dive& dive, const std::vector<double>& frame_times,
                 const std::vector<std::int64_t>& transitions, const ExemplarBank& bank, const Selection& selection,
                 const MeanPairOutputs& pair, int segments, const std::string& backend, double latency_ms) {
  const std::size_t k = selection.indices.size();
  const std::size_t steps = step_names().size();
  if (pair.delta.size() != k || pair.step_deltas.size() != k * steps) {
    throw std::runtime_error("pair head returned " + std::to_string(pair.delta.size()) + " deltas and " +
                             std::to_string(pair.step_deltas.size()) + " step deltas for " + std::to_string(k) +
                             " exemplars");
  }
  if (transitions.size() < 2) throw std::runtime_error("encoder returned fewer than 2 transitions");
  if (frame_times.empty()) throw std::runtime_error("no frames of the dive are in the buffer");
  const auto sampled = sample_frame_indices(0, static_cast<std::int64_t>(frame_times.size()) - 1, kNumFrames);
  // The same float64 arithmetic as the Python scorer: scores and deltas widened from float32,
  // np.mean over exemplars (pairwise), step means over axis 0 (a running sum per step).
  const std::vector<double>& delta = pair.delta;
  std::vector<double> totals(k);
  for (std::size_t i = 0; i < k; ++i) {
    totals[i] = static_cast<double>(bank.final_score[static_cast<std::size_t>(selection.indices[i])]) + delta[i];
  }
  std::vector<double> mean_steps(steps, 0.0);
  for (std::size_t i = 0; i < k; ++i) {
    for (std::size_t s = 0; s < steps; ++s) mean_steps[s] += pair.step_deltas[i * steps + s];
  }
  for (auto& value : mean_steps) value /= static_cast<double>(k);
  const auto last = static_cast<std::int64_t>(sampled.size()) - 1;
  std::vector<std::int64_t> clipped = {std::clamp<std::int64_t>(transitions[0], 0, last),
                                       std::clamp<std::int64_t>(transitions[1], 0, last)};

  Json step_json = Json::object();
  for (std::size_t s = 0; s < steps; ++s) step_json[step_names()[s]] = python_round(mean_steps[s], 6);
  Json transitions_s = Json::array();
  for (auto t : clipped) {
    transitions_s.push_back(python_round(frame_times[static_cast<std::size_t>(sampled[static_cast<std::size_t>(t)])], 4));
  }
  Json exemplars = Json::array();
  for (std::size_t i = 0; i < k; ++i) {
    const auto row = static_cast<std::size_t>(selection.indices[i]);
    exemplars.push_back({{"clip_id", bank.clip_id[row]}, {"dive_number", bank.dive_number[row]},
                         {"score", python_round(static_cast<double>(bank.final_score[row]), 4)},
                         {"delta", python_round(delta[i], 6)}});
  }
  const double end = dive.end ? *dive.end : frame_times[static_cast<std::size_t>(sampled.back())];
  Json event = {
      {"dive", dive.index},
      {"dive_number", optional_text(dive.dive_number)},
      {"score", python_round(numpy_mean(totals), 4)},
      {"mean_delta", python_round(numpy_mean(delta), 6)},
      {"step_deltas", step_json},
      {"transitions_s", transitions_s},
      {"transition_frames", clipped},
      {"start_s", python_round(dive.start, 4)},
      {"end_s", python_round(end, 4)},
      {"frames_in_dive", frame_times.size()},
      {"segments", segments},
      {"exemplars", exemplars},
      {"exemplar_fallback", optional_text(selection.note)},
      {"fallback_order", fallback_order()},
      {"backend", backend},
      {"latency_ms", python_round(latency_ms, 2)},
  };
  if (dive.ground_truth_score) event["ground_truth_score"] = *dive.ground_truth_score;
  return event;
}

RunReport run_source(const RunOptions& options, Backend& backend, const ExemplarBank& bank, EventWriter& events) {
  LiveLoop loop(options, backend, bank, events);
  return loop.run();
}

}  // namespace fineparser
