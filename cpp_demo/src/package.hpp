// The model package as C++ reads it: manifest.json (verified like fineparser.package.load_package),
// bank.bin (the exemplar bank, ExemplarBank.save_bin's format) and the TensorRT engine records.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace fineparser {

using Json = nlohmann::ordered_json;

// A package that is missing, foreign, corrupted or inconsistent (the message names file and remedy).
class PackageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

constexpr const char* kPackageFormat = "fineparser-package";
constexpr int kPackageFormatVersion = 1;
constexpr const char* kManifestFile = "manifest.json";
constexpr const char* kBankFormat = "fineparser-bank";
constexpr int kBankFormatVersion = 1;
constexpr char kBankMagic[9] = "FPBANK01";
constexpr std::size_t kBankAlign = 64;

// fineparser.package.FALLBACK_ORDER: where exemplars come from when a dive number has none.
const std::vector<std::string>& fallback_order();

// A TensorRT engine recorded in manifest["engines"] by `fineparser-export --engine`.
struct EngineRecord {
  std::string graph;               // "encoder", "encoder_masks", "pair_head"
  std::string engine;              // path relative to the package
  std::string tensorrt;            // TensorRT version it was built with, e.g. "10.3.0.30"
  std::string gpu;                 // GPU name
  std::string compute_capability;  // e.g. "sm87"
};

// fineparser.scoring.EdgeOffsets: where a dive's boundaries are moved (seconds) to average its score over
// several segments (manifest scoring.edge_offsets_s; one segment, {0} x {0}, when the manifest has none).
struct EdgeOffsets {
  std::vector<double> start{0.0};
  std::vector<double> end{0.0};

  double lead_s() const;  // how long before a dive's start frames are needed (the earliest start offset)
  // Inclusive index spans into `lead` frames before the dive followed by its `count` frames, the dive as
  // found first; offsets become frames at `interval` s per frame (half to even), spans are clipped to the
  // frames given and at least one frame long, and coinciding spans count once.
  std::vector<std::pair<std::int64_t, std::int64_t>> spans(std::int64_t lead, std::int64_t count,
                                                           double interval) const;
};

struct Package {
  std::string root;
  Json manifest;

  std::string path(const std::string& relative) const;
  bool has(const std::string& relative) const;  // listed in manifest["files"]
  int voter_number() const;                     // manifest scoring.voter_number (10 when absent)
  EdgeOffsets edge_offsets() const;             // manifest scoring.edge_offsets_s; PackageError when malformed
  std::string bank_bin_path() const;            // PackageError when the package has no bank.bin
  std::vector<EngineRecord> engines() const;    // records whose engine file exists
  // The engine of `graph` for this TensorRT version ("10.3.0") and compute capability ("sm87"):
  // an exact match first, else any record of the graph (TensorRT then says why it cannot load it).
  std::optional<EngineRecord> engine_for(const std::string& graph, const std::string& tensorrt_version,
                                         const std::string& compute_capability) const;
};

// manifest.json of a package, checked for format and version (files not verified).
Json read_manifest(const std::string& package_dir);
// Size and sha256 of every file manifest["files"] lists; the first mismatch is a PackageError.
void verify_files(const std::string& package_dir, const Json& manifest);
Package load_package(const std::string& package_dir, bool verify = true);

// Exemplars chosen for a dive and the note saying which fallback was used (none: same dive number).
struct Selection {
  std::vector<std::int64_t> indices;
  std::optional<std::string> note;
};

// A raw array of bank.bin as stored (for dumps and tests).
struct BankArray {
  std::string name;
  std::string dtype;  // "float32" | "int64"
  std::vector<std::int64_t> shape;
  std::vector<unsigned char> bytes;  // little-endian, C order
};

struct ExemplarBank {
  std::int64_t size = 0;  // N exemplars
  std::int64_t windows = 0, feature_dim = 0, token_rows = 0, token_dim = 0;
  std::vector<float> window_features;     // [N, windows, feature_dim]
  std::vector<std::int64_t> transitions;  // [N, 2]
  std::vector<float> static_tokens;       // [N, token_rows, token_dim]
  std::vector<float> final_score;         // [N]
  std::vector<float> difficulty;          // [N]
  std::vector<std::string> dive_number;   // [N]
  std::vector<std::string> clip_id;       // [N] "competition/clip"
  Json metadata;
  std::vector<BankArray> arrays;  // every array as bank.bin stores it

  // ExemplarBank.select: same dive number; else same group and position letter; else any dive.
  // With k (>= 0), at most k of them, spread over their scores.
  Selection select(const std::string& dive_number, std::optional<int> k = std::nullopt) const;
};

ExemplarBank read_bank_bin(const std::string& path);

// Positions of k items whose scores spread over the range (fineparser.package.spread_indices).
std::vector<std::int64_t> spread_indices(const std::vector<double>& scores, int k);
std::string dive_group(const std::string& dive_number);     // first digit, or ""
std::string dive_position(const std::string& dive_number);  // position letter (upper case), or ""
std::string strip(const std::string& text);                 // ASCII whitespace off both ends
// fineparser.spec.canonical_dive_number: the one spelling dive numbers are stored and compared in.
std::string canonical_dive_number(const std::string& dive_number);

}  // namespace fineparser
