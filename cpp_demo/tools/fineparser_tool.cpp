// fineparser_tool: everything of the C++ scorer that does not need TensorRT, on the command line.
// tests/test_cpp_demo.py drives it to compare the C++ side with the Python one; bench/ times it.
//
//   fineparser_tool prepare [--stage prepare|resize|decode] [--out FILE] [--timing] [--repeat N] [--threads N]
//                           SOURCE...
//   fineparser_tool weights IN OUT --out FILE
//   fineparser_tool sample FIRST,LAST,NUM[,END_SHIFT]...
//   fineparser_tool bank BANK.bin --out DIR
//   fineparser_tool select BANK.bin K DIVE_NUMBER...
//   fineparser_tool manifest PKG [--no-verify]
//   fineparser_tool timecodes FILE
//   fineparser_tool format VALUE...
//   fineparser_tool score-event INPUT.json
//   fineparser_tool run SOURCE --package PKG [--segment clip|timecodes:FILE] [--dive-number N] [--buffer-frames N]
//
// `run` is fineparser_demo's whole loop with a stand-in backend instead of TensorRT (see FakeBackend).
// Errors: one "error: ..." line on stderr, exit 2.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include <opencv2/imgcodecs.hpp>

#include "events.hpp"
#include "package.hpp"
#include "preprocess.hpp"
#include "scoring.hpp"
#include "segments.hpp"
#include "video.hpp"

namespace fp = fineparser;

namespace {

class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Positional arguments and --name value / --flag options.
struct Args {
  std::vector<std::string> positional;
  std::map<std::string, std::string> options;

  Args(int argc, char** argv, int start, const std::vector<std::string>& flags) {
    for (int i = start; i < argc; ++i) {
      const std::string arg = argv[i];
      if (arg.rfind("--", 0) == 0) {
        if (std::find(flags.begin(), flags.end(), arg) != flags.end()) {
          options[arg] = "1";
        } else if (i + 1 < argc) {
          options[arg] = argv[++i];
        } else {
          throw UsageError("option " + arg + " needs a value");
        }
      } else {
        positional.push_back(arg);
      }
    }
  }
  std::string get(const std::string& name, const std::string& fallback = "") const {
    const auto found = options.find(name);
    return found == options.end() ? fallback : found->second;
  }
  bool has(const std::string& name) const { return options.count(name) > 0; }
  void need(std::size_t count, const std::string& usage) const {
    if (positional.size() < count) throw UsageError("usage: fineparser_tool " + usage);
  }
};

void write_bytes(const std::string& path, const void* data, std::size_t size) {
  std::ofstream out(path, std::ios::binary);
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
  if (!out) throw std::runtime_error("cannot write " + path);
}

bool is_image(const std::string& path) {
  std::string ext = std::filesystem::path(path).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  return ext == ".png" || ext == ".jpg" || ext == ".jpeg" || ext == ".bmp";
}

// Every BGR frame of the sources: images as cv::imread reads them, videos through VideoFrames.
std::vector<cv::Mat> read_frames(const std::vector<std::string>& sources) {
  std::vector<cv::Mat> frames;
  for (const auto& source : sources) {
    if (is_image(source)) {
      cv::Mat image = cv::imread(source, cv::IMREAD_COLOR);
      if (image.empty()) throw fp::SourceError("cannot decode image " + source);
      frames.push_back(image);
      continue;
    }
    fp::VideoFrames video(source);
    cv::Mat frame;
    double time = 0.0;
    while (video.next(frame, time)) frames.push_back(frame.clone());
  }
  return frames;
}

double percentile(std::vector<double> values, double q) {
  std::sort(values.begin(), values.end());
  const double position = q * static_cast<double>(values.size() - 1);
  const auto below = static_cast<std::size_t>(position);
  const std::size_t above = std::min(below + 1, values.size() - 1);
  return values[below] + (values[above] - values[below]) * (position - static_cast<double>(below));
}

int cmd_prepare(const Args& args) {
  args.need(1, "prepare [--stage prepare|resize|decode] [--out FILE] [--timing] [--repeat N] [--threads N] SOURCE...");
  if (args.has("--threads")) cv::setNumThreads(std::stoi(args.get("--threads")));
  const std::string stage = args.get("--stage", "prepare");
  if (stage != "prepare" && stage != "resize" && stage != "decode") {
    throw UsageError("--stage is prepare, resize or decode, got " + stage);
  }
  const auto frames = read_frames(args.positional);
  if (frames.empty()) throw fp::SourceError("no frames in " + args.positional[0]);
  if (stage == "decode") {  // the decoded BGR frames themselves, to check that both sides decode alike
    std::vector<std::uint8_t> raw;
    for (const auto& frame : frames) raw.insert(raw.end(), frame.datastart, frame.dataend);
    if (args.has("--out")) write_bytes(args.get("--out"), raw.data(), raw.size());
    return 0;
  }
  const int repeat = std::max(std::stoi(args.get("--repeat", "1")), 1);
  fp::FramePreprocessor preprocessor;
  std::vector<std::uint8_t> out;
  std::vector<double> times_ms;
  for (int r = 0; r < repeat; ++r) {
    for (const auto& frame : frames) {
      const auto start = std::chrono::steady_clock::now();
      if (stage == "prepare") {
        std::vector<std::uint8_t> model_frame(fp::kFrameBytes);
        preprocessor.prepare_frame_bgr(frame, model_frame.data());
        times_ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
        if (r == 0) out.insert(out.end(), model_frame.begin(), model_frame.end());
      } else {
        const cv::Mat resized = preprocessor.resize_frame(frame);
        times_ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
        if (r == 0) out.insert(out.end(), resized.datastart, resized.dataend);
      }
    }
  }
  if (args.has("--out")) write_bytes(args.get("--out"), out.data(), out.size());
  if (args.has("--timing")) {
    const double mean = std::accumulate(times_ms.begin(), times_ms.end(), 0.0) / static_cast<double>(times_ms.size());
    fp::Json report = {{"frames", frames.size()},        {"calls", times_ms.size()},
                       {"size", {frames[0].cols, frames[0].rows}},
                       {"median_ms", percentile(times_ms, 0.5)}, {"p90_ms", percentile(times_ms, 0.9)},
                       {"min_ms", percentile(times_ms, 0.0)},    {"mean_ms", mean},
                       {"opencv_threads", cv::getNumThreads()}};
    std::cout << fp::json_line(report) << '\n';
  }
  return 0;
}

int cmd_weights(const Args& args) {
  args.need(2, "weights IN OUT --out FILE");
  const int in_size = std::stoi(args.positional[0]), out_size = std::stoi(args.positional[1]);
  const int factor = fp::reduction_factor(in_size, out_size);
  const double scale = factor == 1 ? static_cast<double>(in_size) / out_size
                                   : static_cast<double>(in_size) / out_size / factor;
  const auto dense = fp::triangle_filter(in_size / factor, out_size, scale).dense();
  if (args.has("--out")) write_bytes(args.get("--out"), dense.data(), dense.size() * sizeof(float));
  std::cout << fp::json_line({{"factor", factor}, {"inputs", in_size / factor}, {"scale", scale}}) << '\n';
  return 0;
}

int cmd_sample(const Args& args) {
  args.need(1, "sample FIRST,LAST,NUM[,END_SHIFT]...");
  fp::Json out = fp::Json::array();
  for (const auto& spec : args.positional) {
    std::vector<long long> numbers;
    std::stringstream fields(spec);
    for (std::string field; std::getline(fields, field, ',');) numbers.push_back(std::stoll(field));
    if (numbers.size() < 3) throw UsageError("sample takes FIRST,LAST,NUM[,END_SHIFT], got " + spec);
    out.push_back(fp::sample_frame_indices(numbers[0], numbers[1], static_cast<int>(numbers[2]),
                                           numbers.size() > 3 ? numbers[3] : 0));
  }
  std::cout << fp::json_line(out) << '\n';
  return 0;
}

int cmd_bank(const Args& args) {
  args.need(1, "bank BANK.bin --out DIR");
  const fp::ExemplarBank bank = fp::read_bank_bin(args.positional[0]);
  fp::Json arrays = fp::Json::array();
  for (const auto& array : bank.arrays) {
    arrays.push_back({{"name", array.name}, {"dtype", array.dtype}, {"shape", array.shape}});
    if (args.has("--out")) {
      std::filesystem::create_directories(args.get("--out"));
      write_bytes((std::filesystem::path(args.get("--out")) / (array.name + ".bin")).string(), array.bytes.data(),
                  array.bytes.size());
    }
  }
  // The typed views too: what the scorer uses (final_score etc. as float, transitions as int64).
  fp::Json report = {{"size", bank.size},
                     {"windows", bank.windows},
                     {"feature_dim", bank.feature_dim},
                     {"token_rows", bank.token_rows},
                     {"token_dim", bank.token_dim},
                     {"arrays", arrays},
                     {"dive_number", bank.dive_number},
                     {"clip_id", bank.clip_id},
                     {"final_score", bank.final_score},
                     {"difficulty", bank.difficulty},
                     {"transitions", bank.transitions},
                     {"metadata", bank.metadata}};
  std::cout << fp::json_line(report) << '\n';
  return 0;
}

int cmd_select(const Args& args) {
  args.need(2, "select BANK.bin K DIVE_NUMBER...");
  const fp::ExemplarBank bank = fp::read_bank_bin(args.positional[0]);
  const int k = std::stoi(args.positional[1]);
  fp::Json out = fp::Json::array();
  for (std::size_t i = 2; i < args.positional.size(); ++i) {
    const auto selection = bank.select(args.positional[i], k >= 0 ? std::optional<int>(k) : std::nullopt);
    out.push_back({{"dive_number", args.positional[i]},
                   {"indices", selection.indices},
                   {"note", selection.note ? fp::Json(*selection.note) : fp::Json()}});
  }
  std::cout << fp::json_line(out) << '\n';
  return 0;
}

int cmd_manifest(const Args& args) {
  args.need(1, "manifest PKG [--no-verify]");
  const fp::Package package = fp::load_package(args.positional[0], !args.has("--no-verify"));
  fp::Json engines = fp::Json::array();
  for (const auto& record : package.engines()) {
    engines.push_back({{"graph", record.graph}, {"engine", record.engine}, {"tensorrt", record.tensorrt}});
  }
  std::cout << fp::json_line({{"voter_number", package.voter_number()},
                                 {"bank_bin", package.bank_bin_path()},
                                 {"verified", !args.has("--no-verify")},
                                 {"engines", engines}})
            << '\n';
  return 0;
}

fp::Json dive_json(const fp::Dive& dive) {
  return {{"dive", dive.index},
          {"start_s", dive.start},
          {"end_s", dive.end ? fp::Json(*dive.end) : fp::Json()},
          {"dive_number", dive.dive_number ? fp::Json(*dive.dive_number) : fp::Json()},
          {"ground_truth_score", dive.ground_truth_score ? fp::Json(*dive.ground_truth_score) : fp::Json()},
          {"source", dive.source}};
}

int cmd_timecodes(const Args& args) {
  args.need(1, "timecodes FILE");
  fp::Json out = fp::Json::array();
  for (const auto& dive : fp::read_timecodes(args.positional[0])) out.push_back(dive_json(dive));
  std::cout << fp::json_line(out) << '\n';
  return 0;
}

int cmd_format(const Args& args) {
  fp::Json out = fp::Json::array();
  for (const auto& text : args.positional) {
    const double value = std::strtod(text.c_str(), nullptr);
    out.push_back({fp::python_repr(value), fp::python_round(value, 4), fp::python_round(value, 6)});
  }
  std::cout << fp::json_line(out) << '\n';
  return 0;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::ostringstream data;
  data << in.rdbuf();
  return data.str();
}

int cmd_score_event(const Args& args) {
  args.need(1, "score-event INPUT.json");
  const fp::Json input = fp::Json::parse(read_text(args.positional[0]));
  const fp::ExemplarBank bank = fp::read_bank_bin(input.at("bank").get<std::string>());
  const fp::Json& d = input.at("dive");
  fp::Dive dive;
  dive.index = d.at("index").get<int>();
  dive.start = d.at("start").get<double>();
  if (!d.at("end").is_null()) dive.end = d.at("end").get<double>();
  if (!d.at("dive_number").is_null()) dive.dive_number = d.at("dive_number").get<std::string>();
  if (!d.at("ground_truth_score").is_null()) dive.ground_truth_score = d.at("ground_truth_score").get<double>();
  const auto selection = fp::choose_exemplars(bank, dive.dive_number, input.at("voter_number").get<int>());
  const auto deltas = input.at("deltas_by_row").get<std::vector<float>>();
  const auto steps = input.at("step_deltas_by_row").get<std::vector<std::vector<float>>>();
  fp::PairOutputs pair;
  for (auto row : selection.indices) {
    pair.delta.push_back(deltas.at(static_cast<std::size_t>(row)));
    for (float v : steps.at(static_cast<std::size_t>(row))) pair.step_deltas.push_back(v);
  }
  const fp::Json event =
      fp::score_event(dive, input.at("frame_times").get<std::vector<double>>(),
                      input.at("transitions").get<std::vector<std::int64_t>>(), bank, selection,
                      fp::mean_pair_outputs({pair}), input.value("segments", 1), "test", 0.0);
  std::cout << fp::json_line(event) << '\n';
  return 0;
}

// A stand-in for the TensorRT engines whose outputs depend on which frames make the clip and on the
// exemplar rows, so that a test can predict them in Python:
//   transitions = [argmax of the centre pixels of frames 0..47, 48 + argmax of those of frames 48..95]
//                  (the centre pixel's first channel; the first frame on a tie. The tests stamp each frame of
//                  their videos with a flat block of its own level there, which preprocessing keeps exactly;
//                  the rest of a frame may differ by one level between the two sides, see README)
//   delta[k] = window_features[row_k, 0, 0] + 0.01 * (transitions[0] + transitions[1]);
//   step_deltas[k] = delta[k] * (0.3, 0.5, 0.2), all in float32 (the query's part makes every segment count)
class FakeBackend : public fp::Backend {
 public:
  std::string name() const override { return "fake"; }
  std::string description() const override { return "fake (fineparser_tool)"; }
  fp::QueryFeatures encode(const std::vector<std::uint8_t>& frames) override {
    constexpr std::size_t kCentre = (std::size_t{fp::kFrameSize / 2} * fp::kFrameSize + fp::kFrameSize / 2) * 3;
    std::vector<std::uint8_t> centres(frames.size() / fp::kFrameBytes);
    for (std::size_t i = 0; i < centres.size(); ++i) centres[i] = frames.at(i * fp::kFrameBytes + kCentre);
    const auto half = centres.begin() + static_cast<std::ptrdiff_t>(centres.size() / 2);
    fp::QueryFeatures query;
    query.transitions = {std::max_element(centres.begin(), half) - centres.begin(),
                         std::max_element(half, centres.end()) - centres.begin()};
    return query;
  }
  fp::PairOutputs pair_head(const fp::QueryFeatures& query, const fp::ExemplarBank& bank,
                            const std::vector<std::int64_t>& indices) override {
    fp::PairOutputs out;
    const float from_query = 0.01f * static_cast<float>(query.transitions.at(0) + query.transitions.at(1));
    for (auto row : indices) {
      const float delta =
          bank.window_features[static_cast<std::size_t>(row * bank.windows * bank.feature_dim)] + from_query;
      out.delta.push_back(delta);
      for (float weight : {0.3f, 0.5f, 0.2f}) out.step_deltas.push_back(delta * weight);
    }
    return out;
  }
};

int cmd_run(const Args& args) {
  args.need(1, "run SOURCE --package PKG [--segment clip|timecodes:FILE] [--dive-number N] [--buffer-frames N]");
  if (!args.has("--package")) throw UsageError("--package PKG is required");
  const fp::Package package = fp::load_package(args.get("--package"));
  const fp::ExemplarBank bank = fp::read_bank_bin(package.bank_bin_path());
  fp::RunOptions options;
  options.source = args.positional[0];
  options.segment = args.get("--segment", "clip");
  if (args.has("--dive-number")) options.dive_number = fp::canonical_dive_number(args.get("--dive-number"));
  options.buffer_frames = static_cast<std::size_t>(std::stoul(args.get("--buffer-frames", "3000")));
  options.voter_number = package.voter_number();
  options.edge_offsets = package.edge_offsets();
  FakeBackend backend;
  fp::EventWriter events(std::cout);
  const auto report = fp::run_source(options, backend, bank, events);
  std::cerr << "fineparser_tool: " << report.scored << " dive(s) scored, " << report.frames << " frames\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string usage =
      "usage: fineparser_tool {prepare,weights,sample,bank,select,manifest,timecodes,format,score-event,run} ...";
  if (argc < 2) {
    std::cerr << usage << '\n';
    return 2;
  }
  const std::string command = argv[1];
  try {
    if (command == "prepare") return cmd_prepare(Args(argc, argv, 2, {"--timing"}));
    if (command == "weights") return cmd_weights(Args(argc, argv, 2, {}));
    if (command == "sample") return cmd_sample(Args(argc, argv, 2, {}));
    if (command == "bank") return cmd_bank(Args(argc, argv, 2, {}));
    if (command == "select") return cmd_select(Args(argc, argv, 2, {}));
    if (command == "manifest") return cmd_manifest(Args(argc, argv, 2, {"--no-verify"}));
    if (command == "timecodes") return cmd_timecodes(Args(argc, argv, 2, {}));
    if (command == "format") return cmd_format(Args(argc, argv, 2, {}));
    if (command == "score-event") return cmd_score_event(Args(argc, argv, 2, {}));
    if (command == "run") return cmd_run(Args(argc, argv, 2, {}));
    std::cerr << usage << '\n';
    return 2;
  } catch (const std::exception& exc) {
    std::cerr << "error: " << exc.what() << '\n';
    return 2;
  }
}
