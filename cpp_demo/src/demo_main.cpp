// fineparser_demo VIDEO --package PKG [--segment clip|timecodes:FILE] [--dive-number 107B] [--precision auto]
//
// Scores the dives of a video with a model package's TensorRT engines (of one precision: the
// manifest's recommended one with --precision auto, as fineparser-live) and prints the Python
// runtime's events (fineparser-live, docs/runtime.md) as JSON lines on stdout (or --events FILE).
// Exit codes: 0 done; 1 the run failed after scoring started; 2 bad input or no usable engine/GPU
// (one "error:" line on stderr, as fineparser-live).
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "events.hpp"
#include "package.hpp"
#include "scoring.hpp"
#include "segments.hpp"
#include "trt_backend.hpp"
#include "video.hpp"

namespace fp = fineparser;

namespace {

const char* const kUsage =
    "usage: fineparser_demo VIDEO --package PKG [--segment clip|timecodes:FILE] [--dive-number NUMBER]\n"
    "                       [--precision auto|fp32|fp16|int8] [--encoder-engine FILE] [--pair-engine FILE]\n"
    "                       [--events OUT.jsonl] [--buffer-frames N] [--device N] [--no-verify]\n"
    "\n"
    "  VIDEO             video file or network URL (rtsp://, udp://, ...), read with OpenCV's FFmpeg backend\n"
    "  --package PKG     model package of fineparser-export (sha256 of its files verified unless --no-verify)\n"
    "  --segment         clip (default: the whole video is one dive) or timecodes:FILE (CSV start,end[,dive_number]\n"
    "                    or JSON, as fineparser-live reads them)\n"
    "  --dive-number N   dive number of dives the timecodes do not name (exemplars come from it; none: any dive)\n"
    "  --precision P     engines of this precision (manifest['engines'][i].precision); auto (default): the\n"
    "                    manifest's recommended_precision if its engines are here, else the most compressed\n"
    "                    precision below it that met its goals (recommended_precision.met_goals) and has engines\n"
    "  --encoder-engine, --pair-engine\n"
    "                    engine files (default: the package's engines for this GPU and TensorRT version,\n"
    "                    manifest['engines'], built by `fineparser-export CKPT --out PKG --engine`)\n"
    "  --events FILE     write the JSON lines there instead of stdout\n"
    "  --buffer-frames N frames kept for scoring (default 3000: 60 s at 50 fps, as fineparser-live)\n";

class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// fineparser.precision.PRECISIONS: least to most compressed.
const std::vector<std::string> kPrecisions = {"fp32", "fp16", "int8"};

struct Options {
  std::string source, package, segment = "clip", encoder_engine, pair_engine, events, precision = "auto";
  std::optional<std::string> dive_number;
  std::size_t buffer_frames = 3000;
  int device = 0;
  bool verify = true;
};

Options parse(int argc, char** argv) {
  Options options;
  const std::map<std::string, std::string*> values = {
      {"--package", &options.package},          {"--segment", &options.segment},
      {"--encoder-engine", &options.encoder_engine}, {"--pair-engine", &options.pair_engine},
      {"--events", &options.events},            {"--precision", &options.precision}};
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      std::cout << kUsage;
      std::exit(0);
    }
    if (arg == "--no-verify") {
      options.verify = false;
      continue;
    }
    const bool takes_value = values.count(arg) || arg == "--dive-number" || arg == "--buffer-frames" ||
                             arg == "--device";
    if (takes_value) {
      if (i + 1 >= argc) throw UsageError(arg + " needs a value");
      const std::string value = argv[++i];
      if (values.count(arg)) {
        *values.at(arg) = value;
      } else if (arg == "--dive-number") {
        options.dive_number = value;
      } else {
        try {
          if (arg == "--device") {
            options.device = std::stoi(value);
          } else {
            options.buffer_frames = static_cast<std::size_t>(std::stoul(value));
          }
        } catch (const std::exception&) {
          throw UsageError(arg + " takes a number, got '" + value + "'");
        }
      }
    } else if (arg.rfind("--", 0) == 0) {
      throw UsageError("unknown option " + arg + " (see --help)");
    } else if (options.source.empty()) {
      options.source = arg;
    } else {
      throw UsageError("one VIDEO only, got '" + options.source + "' and '" + arg + "'");
    }
  }
  if (options.source.empty()) throw UsageError("VIDEO is required (a video file or a stream URL); see --help");
  if (options.package.empty()) throw UsageError("--package PKG is required (a directory written by fineparser-export)");
  if (options.encoder_engine.empty() != options.pair_engine.empty()) {
    throw UsageError("--encoder-engine and --pair-engine go together");
  }
  if (std::find(kPrecisions.begin(), kPrecisions.end(), options.precision) == kPrecisions.end() &&
      options.precision != "auto") {
    throw UsageError("--precision " + options.precision + ": unknown; known: auto, fp32, fp16, int8");
  }
  return options;
}

// One engine record of manifest["engines"], as fineparser-export / fineparser-calibrate write it.
struct EngineChoice {
  std::string engine, tensorrt, gpu, compute_capability;
};

// Why a record cannot run here (empty: it can): its engine file, the ONNX it was built from (the
// package's file must still have that sha256: a re-calibrated variant does not), this GPU and TensorRT.
std::string record_problem(const fp::Package& package, const fp::Json& record, const std::string& version,
                           const std::string& sm, bool* other_device) {
  const std::string engine = record.value("engine", std::string());
  const std::string what = engine + " (" + record.value("precision", std::string("fp32")) + " " +
                           record.value("graph", std::string()) + ")";
  if (engine.empty() || !std::filesystem::is_regular_file(package.path(engine))) return "engine " + what + " is missing";
  const std::string onnx = record.value("onnx", std::string());
  const auto& files = package.manifest.contains("files") ? package.manifest["files"] : fp::Json::object();
  if (files.is_object() && files.contains(onnx) && files[onnx].is_object() &&
      files[onnx].value("sha256", std::string()) != record.value("onnx_sha256", std::string())) {
    return "engine " + what + " is stale: built from another " + onnx + " than the package's";
  }
  *other_device = record.value("compute_capability", std::string()) != sm ||
                  record.value("tensorrt", std::string()).rfind(version, 0) != 0;
  return "";
}

// The usable record of `graph` at `precision` (an exact GPU/TensorRT match first, else one of another
// device, said on stderr: TensorRT then refuses it by name if it really is foreign); problems collected.
std::optional<EngineChoice> engine_for(const fp::Package& package, const std::string& graph,
                                       const std::string& precision, const std::string& version,
                                       const std::string& sm, std::vector<std::string>& problems) {
  std::optional<EngineChoice> fallback;
  if (!package.manifest.contains("engines") || !package.manifest["engines"].is_array()) return fallback;
  for (const auto& record : package.manifest["engines"]) {
    if (!record.is_object() || record.value("graph", std::string()) != graph ||
        record.value("precision", std::string("fp32")) != precision) {
      continue;
    }
    bool other_device = false;
    const std::string problem = record_problem(package, record, version, sm, &other_device);
    if (!problem.empty()) {
      problems.push_back(problem);
      continue;
    }
    EngineChoice choice{record.value("engine", std::string()), record.value("tensorrt", std::string()),
                        record.value("gpu", std::string()), record.value("compute_capability", std::string())};
    if (!other_device) return choice;
    if (!fallback) fallback = choice;
  }
  return fallback;
}

// --precision auto (fineparser.precision's rule on a GPU): the manifest's recommended precision when
// its engines are here, else the most compressed one below it that met its goals and has engines.
std::string resolve_precision(const Options& options, const fp::Package& package, const std::string& version,
                              const std::string& sm) {
  if (options.precision != "auto") return options.precision;
  std::string recommended = "fp32";
  std::vector<std::string> met = {"fp32"};
  const auto& manifest = package.manifest;
  if (manifest.contains("recommended_precision") && manifest["recommended_precision"].is_object()) {
    const auto& section = manifest["recommended_precision"];
    recommended = section.value("precision", std::string("fp32"));
    if (section.contains("met_goals") && section["met_goals"].is_array()) {
      met = section["met_goals"].get<std::vector<std::string>>();
    }
  }
  const auto top = std::find(kPrecisions.begin(), kPrecisions.end(), recommended);
  for (auto it = std::make_reverse_iterator(top == kPrecisions.end() ? kPrecisions.begin() + 1 : top + 1);
       it != kPrecisions.rend(); ++it) {
    std::vector<std::string> ignored;
    const bool measured = *it == "fp32" || std::find(met.begin(), met.end(), *it) != met.end();
    if (measured && engine_for(package, "encoder", *it, version, sm, ignored) &&
        engine_for(package, "pair_head", *it, version, sm, ignored)) {
      if (*it != recommended) {
        std::cerr << "fineparser_demo: the package recommends " << recommended << "; its engines are not here, "
                  << "running " << *it << "\n";
      }
      return *it;
    }
  }
  return "fp32";
}

// The engine files: given on the command line, or the package's records of the chosen precision.
std::pair<std::string, std::string> engine_paths(const Options& options, const fp::Package& package,
                                                 std::string& precision) {
  if (!options.encoder_engine.empty()) return {options.encoder_engine, options.pair_engine};
  const auto [gpu, sm] = fp::cuda_device(options.device);
  const std::string version = fp::tensorrt_version();
  precision = resolve_precision(options, package, version, sm);
  std::vector<std::string> problems;
  const auto encoder = engine_for(package, "encoder", precision, version, sm, problems);
  const auto pair = engine_for(package, "pair_head", precision, version, sm, problems);
  if (!encoder || !pair) {
    std::string why;
    for (const auto& problem : problems) why += problem + "; ";
    throw UsageError(package.root + " has no usable " + precision + " TensorRT engine for " +
                     std::string(!encoder ? "encoder" : "") + (!encoder && !pair ? ", " : "") +
                     (!pair ? "pair_head" : "") + " (" + why + "build them on this machine with " +
                     "`fineparser-calibrate " + package.root + " --engine`, or pass --encoder-engine and --pair-engine)");
  }
  for (const auto* record : {&*encoder, &*pair}) {
    if (record->compute_capability != sm || record->tensorrt.rfind(version, 0) != 0) {
      std::cerr << "fineparser_demo: " << record->engine << " was built with TensorRT " << record->tensorrt
                << " for " << record->gpu << " " << record->compute_capability << "; this is TensorRT " << version
                << " on " << gpu << " " << sm << "\n";
    }
  }
  return {package.path(encoder->engine), package.path(pair->engine)};
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  fp::Package package;
  fp::ExemplarBank bank;
  fp::EdgeOffsets edge_offsets;
  try {
    options = parse(argc, argv);
    package = fp::load_package(options.package, options.verify);
    bank = fp::read_bank_bin(package.bank_bin_path());
    edge_offsets = package.edge_offsets();  // a malformed manifest entry is bad input, before any engine loads
  } catch (const std::exception& exc) {
    std::cerr << "error: " << exc.what() << '\n';
    return 2;
  }
  std::ofstream file;
  if (!options.events.empty()) {
    file.open(options.events);
    if (!file) {
      std::cerr << "error: cannot write events to " << options.events << '\n';
      return 2;
    }
  }
  fp::EventWriter events(options.events.empty() ? std::cout : file);
  std::unique_ptr<fp::TensorRTBackend> backend;
  try {
    std::string precision = options.precision;
    const auto [encoder, pair] = engine_paths(options, package, precision);
    const auto start = std::chrono::steady_clock::now();
    backend = std::make_unique<fp::TensorRTBackend>(encoder, pair, options.device);
    backend->check_bank(bank);
    // One dummy encode and pair head, so that the first dive pays no lazy setup (as fineparser-live).
    const auto query = backend->encode(std::vector<std::uint8_t>(fp::kNumFrames * fp::kFrameBytes, 0));
    backend->pair_head(query, bank, bank.select("", 1).indices);
    const double warmup_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    std::cerr << "fineparser_demo: " << backend->description() << " " << precision << " ready (" << encoder << ", "
              << pair << ")\n";
    events.publish("stream", {{"status", "backend"}, {"backend", backend->name()},
                              {"description", backend->description()}, {"requested", "tensorrt"},
                              {"skipped", fp::Json::array()}, {"warmup_ms", fp::python_round(warmup_ms, 1)}});
  } catch (const std::exception& exc) {  // no engine, no GPU, an engine TensorRT refuses: bad input, as fineparser-live
    std::cerr << "error: " << exc.what() << '\n';
    return 2;
  }
  fp::RunOptions run;
  run.source = options.source;
  run.segment = options.segment;
  run.dive_number = options.dive_number;
  run.buffer_frames = options.buffer_frames;
  run.voter_number = package.voter_number();
  run.edge_offsets = edge_offsets;
  try {
    const auto report = fp::run_source(run, *backend, bank, events);
    std::vector<double> prepare = report.prepare_ms;
    std::sort(prepare.begin(), prepare.end());
    std::cerr << "fineparser_demo: done: " << report.scored << " of " << report.dives << " dive(s) scored, "
              << report.frames << " frames (" << report.corrupt << " corrupt), preprocessing median "
              << (prepare.empty() ? 0.0 : prepare[prepare.size() / 2]) << " ms per frame\n";
  } catch (const fp::SourceError& exc) {
    std::cerr << "error: " << exc.what() << '\n';
    return 2;
  } catch (const fp::SegmentError& exc) {
    std::cerr << "error: " << exc.what() << '\n';
    return 2;
  } catch (const std::exception& exc) {
    std::cerr << "error: " << exc.what() << '\n';
    return 1;
  }
  return 0;
}
