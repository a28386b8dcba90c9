// fineparser_demo VIDEO --package PKG [--segment clip|timecodes:FILE] [--dive-number 107B]
//
// Scores the dives of a video with a model package's TensorRT engines and prints the Python
// runtime's events (fineparser-live, docs/runtime.md) as JSON lines on stdout (or --events FILE).
// Exit codes: 0 done; 1 the run failed after scoring started; 2 bad input or no usable engine/GPU
// (one "error:" line on stderr, as fineparser-live).
#include <algorithm>
#include <chrono>
#include <cstdlib>
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
    "                       [--encoder-engine FILE] [--pair-engine FILE] [--events OUT.jsonl]\n"
    "                       [--buffer-frames N] [--device N] [--no-verify]\n"
    "\n"
    "  VIDEO             video file or network URL (rtsp://, udp://, ...), read with OpenCV's FFmpeg backend\n"
    "  --package PKG     model package of fineparser-export (sha256 of its files verified unless --no-verify)\n"
    "  --segment         clip (default: the whole video is one dive) or timecodes:FILE (CSV start,end[,dive_number]\n"
    "                    or JSON, as fineparser-live reads them)\n"
    "  --dive-number N   dive number of dives the timecodes do not name (exemplars come from it; none: any dive)\n"
    "  --encoder-engine, --pair-engine\n"
    "                    engine files (default: the package's engines for this GPU and TensorRT version,\n"
    "                    manifest['engines'], built by `fineparser-export CKPT --out PKG --engine`)\n"
    "  --events FILE     write the JSON lines there instead of stdout\n"
    "  --buffer-frames N frames kept for scoring (default 3000: 60 s at 50 fps, as fineparser-live)\n";

class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct Options {
  std::string source, package, segment = "clip", encoder_engine, pair_engine, events;
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
      {"--events", &options.events}};
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
  return options;
}

// The engine files: given on the command line, or the package's records for this GPU and TensorRT.
std::pair<std::string, std::string> engine_paths(const Options& options, const fp::Package& package) {
  if (!options.encoder_engine.empty()) return {options.encoder_engine, options.pair_engine};
  const auto [gpu, sm] = fp::cuda_device(options.device);
  const std::string version = fp::tensorrt_version();
  const auto encoder = package.engine_for("encoder", version, sm);
  const auto pair = package.engine_for("pair_head", version, sm);
  if (!encoder || !pair) {
    throw UsageError(package.root + " has no TensorRT engine for " +
                     std::string(!encoder ? "encoder" : "") + (!encoder && !pair ? ", " : "") +
                     (!pair ? "pair_head" : "") + ": build them on this machine with `fineparser-export CKPT --out " +
                     package.root + " --engine`, or pass --encoder-engine and --pair-engine");
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
  try {
    options = parse(argc, argv);
    package = fp::load_package(options.package, options.verify);
    bank = fp::read_bank_bin(package.bank_bin_path());
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
    const auto [encoder, pair] = engine_paths(options, package);
    const auto start = std::chrono::steady_clock::now();
    backend = std::make_unique<fp::TensorRTBackend>(encoder, pair, options.device);
    backend->check_bank(bank);
    // One dummy encode and pair head, so that the first dive pays no lazy setup (as fineparser-live).
    const auto query = backend->encode(std::vector<std::uint8_t>(fp::kNumFrames * fp::kFrameBytes, 0));
    backend->pair_head(query, bank, bank.select("", 1).indices);
    const double warmup_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    std::cerr << "fineparser_demo: " << backend->description() << " ready (" << encoder << ", " << pair << ")\n";
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
