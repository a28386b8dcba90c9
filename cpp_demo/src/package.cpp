#include "package.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <set>
#include <sstream>

#include "sha256.hpp"

namespace fineparser {

namespace fs = std::filesystem;

namespace {

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw PackageError(path + ": cannot open the file");
  std::ostringstream data;
  data << in.rdbuf();
  return data.str();
}

std::string join(const std::vector<std::string>& parts, const std::string& separator) {
  std::string out;
  for (std::size_t i = 0; i < parts.size(); ++i) out += (i ? separator : "") + parts[i];
  return out;
}

bool host_is_little_endian() {
  const std::uint16_t probe = 1;
  unsigned char first = 0;
  std::memcpy(&first, &probe, 1);
  return first == 1;
}

// The values of a stored array as T (numpy's astype for float32 <-> int64).
template <typename T>
std::vector<T> values_as(const BankArray& array) {
  std::vector<T> out;
  if (array.dtype == "float32") {
    std::vector<float> raw(array.bytes.size() / sizeof(float));
    std::memcpy(raw.data(), array.bytes.data(), raw.size() * sizeof(float));
    out.assign(raw.begin(), raw.end());
  } else {
    std::vector<std::int64_t> raw(array.bytes.size() / sizeof(std::int64_t));
    std::memcpy(raw.data(), array.bytes.data(), raw.size() * sizeof(std::int64_t));
    for (std::int64_t v : raw) out.push_back(static_cast<T>(v));
  }
  return out;
}

std::string shape_text(const std::vector<std::int64_t>& shape) {
  std::vector<std::string> parts;
  for (auto d : shape) parts.push_back(std::to_string(d));
  return "[" + join(parts, ", ") + "]";
}

std::string version_prefix(const std::string& version) {  // "10.3.0.30" -> "10.3.0"
  std::string out;
  int dots = 0;
  for (char c : version) {
    if (c == '.' && ++dots == 3) break;
    out.push_back(c);
  }
  return out;
}

}  // namespace

// fineparser.spec.canonical_dive_number: every whitespace character removed, lower case ('407 C' -> '407c'),
// the spelling of the real FineDiving annotations.
std::string canonical_dive_number(const std::string& dive_number) {
  std::string out;
  for (unsigned char c : dive_number) {
    if (!std::isspace(c)) out += static_cast<char>(std::tolower(c));
  }
  return out;
}

const std::vector<std::string>& fallback_order() {
  static const std::vector<std::string> order = {"same dive number", "same group (first digit) and position letter",
                                                 "any dive"};
  return order;
}

// --------------------------------------------------------------------------- manifest

std::string Package::path(const std::string& relative) const { return (fs::path(root) / relative).string(); }

bool Package::has(const std::string& relative) const {
  return manifest.contains("files") && manifest["files"].is_object() && manifest["files"].contains(relative);
}

int Package::voter_number() const {
  if (manifest.contains("scoring") && manifest["scoring"].is_object()) {
    const auto& value = manifest["scoring"].value("voter_number", Json(10));
    if (value.is_number_integer()) return value.get<int>();
  }
  return 10;
}

namespace {

constexpr double kMaxEdgeOffsetS = 1.0;  // fineparser.scoring.MAX_EDGE_OFFSET_S

std::vector<double> edge_offset_list(const Json& raw, const std::string& name, const std::string& where) {
  const Json& values = raw.at(name);
  const auto refuse = [&](const std::string& what) {
    return PackageError(where + ": edge_offsets_s." + name + " " + what + ", got " + values.dump());
  };
  std::vector<double> out;
  for (const auto& value : values) {
    if (!value.is_number() || value.is_boolean() || !std::isfinite(value.get<double>())) {
      throw refuse("must be a non-empty list of finite seconds");
    }
    out.push_back(value.get<double>());
  }
  if (out.empty()) throw refuse("must be a non-empty list of finite seconds");
  if (std::find(out.begin(), out.end(), 0.0) == out.end()) throw refuse("must contain 0 (the segment as found)");
  for (double value : out) {
    if (std::abs(value) > kMaxEdgeOffsetS) throw refuse("offsets must be within 1.0 s of the boundary");
  }
  return out;
}

}  // namespace

EdgeOffsets Package::edge_offsets() const {
  EdgeOffsets offsets;
  if (!manifest.contains("scoring") || !manifest["scoring"].is_object()) return offsets;
  const Json& scoring = manifest["scoring"];
  if (!scoring.contains("edge_offsets_s") || scoring["edge_offsets_s"].is_null()) return offsets;
  const Json& raw = scoring["edge_offsets_s"];
  const std::string where = (fs::path(root) / "manifest.json").string();
  if (!raw.is_object() || raw.size() != 2 || !raw.contains("start") || !raw.contains("end") ||
      !raw["start"].is_array() || !raw["end"].is_array()) {
    throw PackageError(where + ": scoring.edge_offsets_s must be {\"start\": [seconds...], \"end\": [seconds...]}, "
                       "got " + raw.dump());
  }
  offsets.start = edge_offset_list(raw, "start", where);
  offsets.end = edge_offset_list(raw, "end", where);
  for (double value : offsets.end) {
    if (value > 0) {
      throw PackageError(where + ": edge_offsets_s.end offsets must be <= 0 (frames after a dive's end are not "
                         "waited for), got " + raw["end"].dump());
    }
  }
  return offsets;
}

double EdgeOffsets::lead_s() const { return std::max(0.0, -*std::min_element(start.begin(), start.end())); }

std::vector<std::pair<std::int64_t, std::int64_t>> EdgeOffsets::spans(std::int64_t lead, std::int64_t count,
                                                                      double interval) const {
  if (count < 1) throw std::invalid_argument("a dive needs at least one frame to be scored");
  const std::int64_t first = lead, last = lead + count - 1;
  std::vector<std::pair<std::int64_t, std::int64_t>> out = {{first, last}};
  if (!(interval > 0)) return out;
  for (double a : start) {
    for (double b : end) {
      const auto shift_a = static_cast<std::int64_t>(std::nearbyint(a / interval));
      const auto shift_b = static_cast<std::int64_t>(std::nearbyint(b / interval));
      const std::int64_t lo = std::min(std::max<std::int64_t>(0, first + shift_a), last);
      const std::int64_t hi = std::max(std::min(last, last + shift_b), lo);
      if (std::find(out.begin(), out.end(), std::make_pair(lo, hi)) == out.end()) out.emplace_back(lo, hi);
    }
  }
  return out;
}

std::string Package::bank_bin_path() const {
  const Json bank = manifest.value("bank", Json::object());
  if (bank.value("status", std::string()) != "bank") {
    throw PackageError(root + " has no exemplar bank: re-export with `fineparser-export CKPT --data-root DIR` to "
                              "build one from the training split");
  }
  const std::string binary = bank.value("binary", std::string());
  if (binary.empty() || !has(binary)) {
    throw PackageError(root + " has an exemplar bank but no bank.bin for C++ in its manifest: re-export the "
                              "package with a current fineparser-export");
  }
  return path(binary);
}

std::vector<EngineRecord> Package::engines() const {
  std::vector<EngineRecord> records;
  if (!manifest.contains("engines") || !manifest["engines"].is_array()) return records;
  for (const auto& item : manifest["engines"]) {
    if (!item.is_object()) continue;
    EngineRecord record{item.value("graph", std::string()), item.value("engine", std::string()),
                        item.value("tensorrt", std::string()), item.value("gpu", std::string()),
                        item.value("compute_capability", std::string())};
    if (!record.graph.empty() && !record.engine.empty() && fs::is_regular_file(path(record.engine))) {
      records.push_back(record);
    }
  }
  return records;
}

std::optional<EngineRecord> Package::engine_for(const std::string& graph, const std::string& tensorrt_version,
                                                const std::string& compute_capability) const {
  std::optional<EngineRecord> fallback;
  for (const auto& record : engines()) {
    if (record.graph != graph) continue;
    if (version_prefix(record.tensorrt) == version_prefix(tensorrt_version) &&
        record.compute_capability == compute_capability) {
      return record;
    }
    if (!fallback) fallback = record;
  }
  return fallback;
}

Json read_manifest(const std::string& package_dir) {
  const fs::path root(package_dir);
  const fs::path path = root / kManifestFile;
  if (!fs::is_directory(root)) throw PackageError(package_dir + ": no such package directory");
  if (!fs::is_regular_file(path)) {
    throw PackageError(package_dir + " is not a model package (no manifest.json); make one with fineparser-export");
  }
  Json manifest;
  try {
    manifest = Json::parse(read_file(path.string()));
  } catch (const Json::exception& exc) {
    throw PackageError(path.string() + ": cannot be read as JSON (" + exc.what() + "); re-export the package");
  }
  if (!manifest.is_object() || manifest.value("format", std::string()) != kPackageFormat) {
    throw PackageError(path.string() + " is not a FineParser package manifest (format != '" + kPackageFormat + "')");
  }
  const Json version = manifest.value("format_version", Json(0));
  if (!version.is_number_integer() || version.get<long long>() > kPackageFormatVersion) {
    throw PackageError(path.string() + " has package format version " + version.dump() +
                       ", this toolkit reads up to " + std::to_string(kPackageFormatVersion) +
                       ": upgrade fineparser");
  }
  return manifest;
}

void verify_files(const std::string& package_dir, const Json& manifest) {
  if (!manifest.contains("files") || !manifest["files"].is_object()) return;
  for (const auto& [name, entry] : manifest["files"].items()) {
    const std::string path = (fs::path(package_dir) / name).string();
    if (!fs::is_regular_file(path)) {
      throw PackageError(path + ": listed in the manifest but missing; restore it or re-export the package");
    }
    const auto size = static_cast<long long>(fs::file_size(path));
    const Json expected_size = entry.value("size", Json());
    if (!expected_size.is_number_integer() || expected_size.get<long long>() != size) {
      throw PackageError(path + ": size " + std::to_string(size) + " bytes, the manifest says " +
                         expected_size.dump() + ": the file is truncated or was replaced; restore it or "
                         "re-export the package");
    }
    const std::string digest = sha256_file(path);
    const std::string expected = entry.value("sha256", std::string());
    if (digest != expected) {
      throw PackageError(path + ": sha256 " + digest.substr(0, 12) + "... does not match the manifest (" +
                         expected.substr(0, 12) + "...): the file is corrupted or was modified; restore it or "
                         "re-export the package");
    }
  }
}

Package load_package(const std::string& package_dir, bool verify) {
  Package package{package_dir, read_manifest(package_dir)};
  if (verify) verify_files(package_dir, package.manifest);
  return package;
}

// --------------------------------------------------------------------------- exemplar bank

ExemplarBank read_bank_bin(const std::string& path) {
  if (!host_is_little_endian()) throw PackageError(path + ": bank.bin is little-endian; this host is not");
  const std::string data = read_file(path);
  const std::size_t magic = std::strlen(kBankMagic);
  const std::size_t prefix = magic + 8;
  if (data.size() < prefix || data.compare(0, magic, kBankMagic) != 0) {
    throw PackageError(path + ": not a bank.bin file (bad magic); re-export the package");
  }
  std::uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<unsigned char>(data[magic + i]);
  if (header_len > data.size() - prefix) {
    throw PackageError(path + ": bank.bin header runs past the end of the file (truncated?); re-export the package");
  }
  Json header;
  try {
    header = Json::parse(data.substr(prefix, header_len));
  } catch (const Json::exception& exc) {
    throw PackageError(path + ": bank.bin header is not JSON (" + exc.what() + ")");
  }
  if (header.value("format", std::string()) != kBankFormat) {
    throw PackageError(path + ": header format is not '" + std::string(kBankFormat) + "'");
  }
  if (header.value("format_version", 0) > kBankFormatVersion) {
    throw PackageError(path + ": bank format version " + header["format_version"].dump() + ", this reader knows up to " +
                       std::to_string(kBankFormatVersion) + ": upgrade the C++ demo");
  }
  if (header.value("byte_order", std::string("little")) != "little") {
    throw PackageError(path + ": byte order " + header["byte_order"].dump() + " is not supported (little only)");
  }
  const std::size_t data_start = (prefix + header_len + kBankAlign - 1) / kBankAlign * kBankAlign;

  ExemplarBank bank;
  for (const auto& entry : header.value("arrays", Json::array())) {
    BankArray array;
    array.name = entry.at("name").get<std::string>();
    array.dtype = entry.at("dtype").get<std::string>();
    array.shape = entry.at("shape").get<std::vector<std::int64_t>>();
    const auto offset = entry.at("offset").get<std::uint64_t>();
    const auto nbytes = entry.at("nbytes").get<std::uint64_t>();
    if (array.dtype != "float32" && array.dtype != "int64") {
      throw PackageError(path + ": array " + array.name + " has dtype " + array.dtype +
                         ", bank.bin stores float32 and int64");
    }
    const std::uint64_t itemsize = array.dtype == "float32" ? 4 : 8;
    const auto count = std::accumulate(array.shape.begin(), array.shape.end(), std::int64_t{1},
                                       std::multiplies<std::int64_t>());
    if (count < 0 || static_cast<std::uint64_t>(count) * itemsize != nbytes) {
      throw PackageError(path + ": array " + array.name + " of shape " + shape_text(array.shape) + " (" +
                         array.dtype + ") cannot hold " + std::to_string(nbytes) + " bytes");
    }
    if (data_start + offset + nbytes > data.size()) {
      throw PackageError(path + ": array " + array.name + " runs past the end of the file (truncated?)");
    }
    array.bytes.assign(data.begin() + static_cast<std::ptrdiff_t>(data_start + offset),
                       data.begin() + static_cast<std::ptrdiff_t>(data_start + offset + nbytes));
    bank.arrays.push_back(std::move(array));
  }
  const Json strings = header.value("strings", Json::object());
  const Json metadata = header.value("metadata", Json::object());
  bank.metadata = metadata;

  auto find = [&](const std::string& name) -> const BankArray& {
    for (const auto& array : bank.arrays) {
      if (array.name == name) return array;
    }
    throw PackageError(path + ": not an exemplar bank (missing " + name + ")");
  };
  const BankArray& scores = find("final_score");
  bank.final_score = values_as<float>(scores);
  const std::int64_t n = static_cast<std::int64_t>(bank.final_score.size());
  bank.size = n;
  auto check = [&](const BankArray& array, bool ok) {
    if (!ok || array.shape.empty() || array.shape[0] != n) {
      throw PackageError(path + ": exemplar bank: " + array.name + " has shape " + shape_text(array.shape) +
                         ", expected " + std::to_string(n) + " rows");
    }
  };
  const BankArray& window_features = find("window_features");
  check(window_features, window_features.shape.size() == 3);
  bank.window_features = values_as<float>(window_features);
  bank.windows = window_features.shape[1];
  bank.feature_dim = window_features.shape[2];
  const BankArray& transitions = find("transitions");
  check(transitions, transitions.shape.size() == 2 && transitions.shape[1] == 2);
  bank.transitions = values_as<std::int64_t>(transitions);
  const BankArray& static_tokens = find("static_tokens");
  check(static_tokens, static_tokens.shape.size() == 3);
  bank.static_tokens = values_as<float>(static_tokens);
  bank.token_rows = static_tokens.shape[1];
  bank.token_dim = static_tokens.shape[2];
  const BankArray& difficulty = find("difficulty");
  bank.difficulty = values_as<float>(difficulty);
  if (static_cast<std::int64_t>(bank.difficulty.size()) != n) check(difficulty, false);
  for (const char* name : {"dive_number", "clip_id"}) {
    if (!strings.contains(name) || !strings[name].is_array()) {
      throw PackageError(path + ": not an exemplar bank (missing " + name + ")");
    }
    auto values = strings[name].get<std::vector<std::string>>();
    if (static_cast<std::int64_t>(values.size()) != n) {
      throw PackageError(path + ": exemplar bank: " + name + " has " + std::to_string(values.size()) +
                         " entries, expected " + std::to_string(n));
    }
    (std::string(name) == "dive_number" ? bank.dive_number : bank.clip_id) = std::move(values);
  }
  return bank;
}

std::string strip(const std::string& text) {
  const auto is_space = [](unsigned char c) { return std::isspace(c) != 0; };
  auto begin = std::find_if_not(text.begin(), text.end(), is_space);
  auto end = std::find_if_not(text.rbegin(), text.rend(), is_space).base();
  return begin < end ? std::string(begin, end) : std::string();
}

std::string dive_group(const std::string& dive_number) {
  const std::string text = strip(dive_number);
  return !text.empty() && std::isdigit(static_cast<unsigned char>(text[0])) ? text.substr(0, 1) : "";
}

std::string dive_position(const std::string& dive_number) {
  const std::string text = strip(dive_number);
  if (text.empty() || !std::isalpha(static_cast<unsigned char>(text.back()))) return "";
  return std::string(1, static_cast<char>(std::toupper(static_cast<unsigned char>(text.back()))));
}

std::vector<std::int64_t> spread_indices(const std::vector<double>& scores, int k) {
  const auto n = static_cast<std::int64_t>(scores.size());
  std::vector<std::int64_t> out;
  if (k >= n) {
    for (std::int64_t i = 0; i < n; ++i) out.push_back(i);
    return out;
  }
  if (k <= 0) return out;
  std::vector<std::int64_t> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::int64_t a, std::int64_t b) { return scores[a] < scores[b]; });
  // np.unique(np.round(np.linspace(0, n - 1, k)).astype(int64)): round half to even, as nearbyint.
  std::set<std::int64_t> ranks;
  const double last = static_cast<double>(n - 1);
  const int div = k - 1;
  for (int i = 0; i < k; ++i) {
    double y = div > 0 ? static_cast<double>(i) * (last / div) : 0.0;
    if (div > 0 && i == k - 1) y = last;
    ranks.insert(static_cast<std::int64_t>(std::nearbyint(y)));
  }
  for (std::int64_t rank : ranks) out.push_back(order[static_cast<std::size_t>(rank)]);
  std::sort(out.begin(), out.end());
  return out;
}

Selection ExemplarBank::select(const std::string& wanted, std::optional<int> k) const {
  if (size == 0) throw PackageError("the exemplar bank is empty: no exemplar can be selected");
  const std::string number = canonical_dive_number(wanted);
  std::vector<std::string> bank_numbers;
  for (const auto& other : dive_number) bank_numbers.push_back(canonical_dive_number(other));
  Selection selection;
  std::vector<std::int64_t> chosen;
  for (std::int64_t i = 0; i < size; ++i) {
    if (bank_numbers[static_cast<std::size_t>(i)] == number) chosen.push_back(i);
  }
  if (chosen.empty()) {
    const std::string group = dive_group(number), position = dive_position(number);
    if (!group.empty() && !position.empty()) {
      for (std::int64_t i = 0; i < size; ++i) {
        const auto& other = bank_numbers[static_cast<std::size_t>(i)];
        if (dive_group(other) == group && dive_position(other) == position) chosen.push_back(i);
      }
    }
    if (!chosen.empty()) {
      std::set<std::string> used;
      for (auto i : chosen) used.insert(bank_numbers[static_cast<std::size_t>(i)]);
      selection.note = "no exemplar of dive " + number + " in the bank: using group " + group + " position " +
                       position + " (" + join(std::vector<std::string>(used.begin(), used.end()), ", ") + ")";
    } else {
      for (std::int64_t i = 0; i < size; ++i) chosen.push_back(i);
      selection.note = "no exemplar of dive " + number +
                       " nor of its group and position in the bank: using exemplars of any dive";
    }
  }
  if (k) {
    std::vector<double> scores;
    for (auto i : chosen) scores.push_back(final_score[static_cast<std::size_t>(i)]);
    std::vector<std::int64_t> spread;
    for (auto position : spread_indices(scores, *k)) spread.push_back(chosen[static_cast<std::size_t>(position)]);
    chosen = spread;
  }
  selection.indices = chosen;
  return selection;
}

}  // namespace fineparser
