// Unit tests of fineparser_core (run by ctest; no TensorRT, no Python). Parity with the Python
// implementation on real data is tests/test_cpp_demo.py's job; these pin down properties.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

#include <opencv2/core.hpp>
#include <opencv2/imgproc.hpp>

#include "events.hpp"
#include "package.hpp"
#include "preprocess.hpp"
#include "scoring.hpp"
#include "segments.hpp"
#include "sha256.hpp"

namespace fp = fineparser;
namespace fs = std::filesystem;

namespace {

int failures = 0;

#define CHECK(condition)                                                                   \
  do {                                                                                     \
    if (!(condition)) {                                                                    \
      std::cerr << __FILE__ << ":" << __LINE__ << ": CHECK failed: " #condition << '\n';   \
      ++failures;                                                                          \
    }                                                                                      \
  } while (0)

// The callable throws an exception whose message contains `fragment`.
bool throws_with(const std::function<void()>& call, const std::string& fragment) {
  try {
    call();
  } catch (const std::exception& exc) {
    if (std::string(exc.what()).find(fragment) != std::string::npos) return true;
    std::cerr << "  unexpected message: " << exc.what() << '\n';
    return false;
  }
  return false;
}

fs::path temp_dir() {
  const fs::path dir = fs::temp_directory_path() / ("fineparser_unit_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  return dir;
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

// ----------------------------------------------------------------------------- sha256

void test_sha256_known_vectors() {
  auto hex = [](const std::string& text) {
    fp::Sha256 hash;
    hash.update(text.data(), text.size());
    return hash.hex_digest();
  };
  CHECK(hex("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  CHECK(hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq") ==
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  CHECK(hex(std::string(1000000, 'a')) == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

// ----------------------------------------------------------------------------- preprocessing

void test_sampling_spans_the_dive_and_repeats_short_ones() {
  const auto identity = fp::sample_frame_indices(0, 95, 96);
  for (int i = 0; i < 96; ++i) CHECK(identity[static_cast<std::size_t>(i)] == i);
  for (std::int64_t last : {0, 1, 9, 95, 96, 97, 250, 1000}) {
    const auto indices = fp::sample_frame_indices(0, last, 96);
    CHECK(indices.size() == 96);
    CHECK(indices.front() == 0 && indices.back() == last);
    for (std::size_t i = 1; i < indices.size(); ++i) CHECK(indices[i] >= indices[i - 1]);
  }
  const auto shifted = fp::sample_frame_indices(10, 200, 96, -3);
  CHECK(shifted.front() == 10 && shifted.back() == 197);
  CHECK(throws_with([] { fp::sample_frame_indices(10, 5, 96); }, "before it starts"));
}

void test_crop_and_reduction_factors() {
  CHECK(fp::center_crop_top(200) == 44);
  CHECK(fp::center_crop_top(113) == 0);  // round(0.5) = 0: halves go to even, as in Python
  CHECK(fp::center_crop_top(115) == 2);  // round(1.5) = 2
  CHECK(throws_with([] { fp::center_crop_top(100); }, "cannot crop 112 rows out of 100"));
  CHECK(fp::reduction_factor(1920, 112) == 6);
  CHECK(fp::reduction_factor(1080, 200) == 2);
  CHECK(fp::reduction_factor(455, 112) == 1);
  CHECK(fp::reduction_factor(256, 200) == 1);
  CHECK(fp::reduction_factor(3840, 112) == 12);
  CHECK(fp::reduction_factor(1283, 112) == 1);  // 1283 = 1283: no divisor <= 4
}

void test_triangle_filter_rows_sum_to_one_and_identity_at_scale_one() {
  for (auto [in, out] : {std::pair{455, 112}, {256, 200}, {320, 112}, {60, 200}, {100, 112}}) {
    const auto filter = fp::triangle_filter(in, out, static_cast<double>(in) / out);
    for (int i = 0; i < out; ++i) {
      double total = 0;
      for (int k = 0; k < filter.count[static_cast<std::size_t>(i)]; ++k) {
        total += filter.weights[filter.offset[static_cast<std::size_t>(i)] + static_cast<std::size_t>(k)];
      }
      CHECK(std::fabs(total - 1.0) < 1e-5);
    }
  }
  const auto same = fp::triangle_filter(50, 50, 1.0);
  for (int i = 0; i < 50; ++i) {
    CHECK(same.first[static_cast<std::size_t>(i)] == i);
    CHECK(same.weights[same.offset[static_cast<std::size_t>(i)]] == 1.0f);
  }
}

void test_constant_frames_stay_constant_and_channels_swap() {
  fp::FramePreprocessor preprocessor;
  for (cv::Size size : {cv::Size(1920, 1080), cv::Size(455, 256), cv::Size(640, 360), cv::Size(100, 60)}) {
    const cv::Mat bgr(size, CV_8UC3, cv::Scalar(10, 20, 30));
    std::vector<std::uint8_t> out(fp::kFrameBytes);
    preprocessor.prepare_frame_bgr(bgr, out.data());
    bool constant = true;
    for (std::size_t p = 0; p < out.size(); p += 3) constant &= out[p] == 30 && out[p + 1] == 20 && out[p + 2] == 10;
    CHECK(constant);
    const cv::Mat resized = preprocessor.resize_frame(bgr);
    CHECK(resized.rows == 200 && resized.cols == 112 && resized.type() == CV_8UC3);
  }
}

void test_box_reduce_equals_opencv_inter_area() {
  cv::RNG rng(5);
  for (int channels : {1, 3, 4}) {
    for (auto [fx, fy] : {std::pair{2, 1}, {4, 1}, {6, 2}, {12, 4}, {2, 2}, {3, 3}, {1, 2}}) {
      cv::Mat image(fy * 37, fx * 29, CV_8UC(channels));
      rng.fill(image, cv::RNG::UNIFORM, 0, 256);
      cv::Mat ours, opencv;
      fp::box_reduce(image, ours, fx, fy);
      cv::resize(image, opencv, cv::Size(29, 37), 0, 0, cv::INTER_AREA);
      CHECK(ours.size() == opencv.size() && cv::countNonZero(ours.reshape(1) != opencv.reshape(1)) == 0);
    }
  }
}

void test_prepare_is_the_centre_crop_of_the_resize() {
  cv::Mat frame(256, 455, CV_8UC3);
  cv::randu(frame, 0, 256);
  fp::FramePreprocessor preprocessor;
  const cv::Mat resized = preprocessor.resize_frame(frame);
  const cv::Mat prepared = preprocessor.prepare_frame(frame);
  CHECK(prepared.rows == 112 && prepared.cols == 112);
  CHECK(cv::countNonZero(resized(cv::Rect(0, 44, 112, 112)).reshape(1) != prepared.reshape(1)) == 0);
}

void test_numpy_pairwise_sum_order() {
  // Ten 0.1s: numpy adds eight of them in pairs of blocks, then the last two; left to right differs.
  const std::vector<double> tenths(10, 0.1);
  double sequential = 0;
  for (double v : tenths) sequential += v;
  CHECK(sequential != 1.0);
  CHECK(fp::numpy_pairwise_sum(tenths.data(), tenths.size()) == ((0.1 + 0.1) + (0.1 + 0.1)) +
                                                                    ((0.1 + 0.1) + (0.1 + 0.1)) + 0.1 + 0.1);
}

// ----------------------------------------------------------------------------- bank.bin

// Writes a bank.bin the way fineparser.package.write_bank_bin does.
void write_bank(const fs::path& path, int n, const std::vector<std::string>& numbers, const std::vector<float>& scores,
                bool truncate = false) {
  std::vector<std::pair<fp::Json, std::string>> arrays;
  auto add = [&](const std::string& name, const std::string& dtype, std::vector<std::int64_t> shape,
                 const std::string& bytes) {
    arrays.push_back({{{"name", name}, {"dtype", dtype}, {"shape", shape}, {"nbytes", bytes.size()}}, bytes});
  };
  auto floats = [](const std::vector<float>& values) {
    return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
  };
  std::vector<float> features(static_cast<std::size_t>(n) * 9 * 4);
  for (std::size_t i = 0; i < features.size(); ++i) features[i] = static_cast<float>(i) * 0.5f;
  std::vector<std::int64_t> transitions;
  for (int i = 0; i < n; ++i) transitions.insert(transitions.end(), {20 + i, 60 + i});
  add("window_features", "float32", {n, 9, 4}, floats(features));
  add("transitions", "int64", {n, 2},
      std::string(reinterpret_cast<const char*>(transitions.data()), transitions.size() * 8));
  add("static_tokens", "float32", {n, 12, 2}, floats(std::vector<float>(static_cast<std::size_t>(n) * 24, 1.5f)));
  add("final_score", "float32", {n}, floats(scores));
  add("difficulty", "float32", {n}, floats(std::vector<float>(static_cast<std::size_t>(n), 3.0f)));
  fp::Json entries = fp::Json::array();
  std::size_t offset = 0;
  for (auto& [entry, bytes] : arrays) {
    offset = (offset + 63) / 64 * 64;
    entry["offset"] = offset;
    entries.push_back(entry);
    offset += bytes.size();
  }
  std::vector<std::string> clips;
  for (int i = 0; i < n; ++i) clips.push_back("c/" + std::to_string(i));
  const fp::Json header = {{"format", "fineparser-bank"}, {"format_version", 1}, {"byte_order", "little"},
                           {"alignment", 64}, {"arrays", entries},
                           {"strings", {{"dive_number", numbers}, {"clip_id", clips}}},
                           {"metadata", {{"source", "unit test"}}}};
  const std::string text = header.dump();
  std::string file = "FPBANK01";
  for (int i = 0; i < 8; ++i) file.push_back(static_cast<char>((text.size() >> (8 * i)) & 0xff));
  file += text;
  const std::size_t data_start = (file.size() + 63) / 64 * 64;
  file.resize(data_start, '\0');
  for (std::size_t i = 0; i < arrays.size(); ++i) {
    file.resize(data_start + entries[i]["offset"].get<std::size_t>(), '\0');
    file += arrays[i].second;
  }
  if (truncate) file.resize(file.size() - 10);
  write_text(path, file);
}

void test_bank_bin_reads_back_and_refuses_damage() {
  const fs::path dir = temp_dir();
  const std::vector<std::string> numbers = {"107B", "107B", "107B", "105B", "5253B", "205C"};
  const std::vector<float> scores = {60.0f, 80.0f, 70.0f, 50.0f, 65.0f, 75.0f};
  write_bank(dir / "bank.bin", 6, numbers, scores);
  const auto bank = fp::read_bank_bin((dir / "bank.bin").string());
  CHECK(bank.size == 6 && bank.windows == 9 && bank.feature_dim == 4 && bank.token_rows == 12 && bank.token_dim == 2);
  CHECK(bank.window_features.size() == 6 * 9 * 4 && bank.window_features[3] == 1.5f);
  CHECK(bank.transitions[2] == 21 && bank.transitions[3] == 61);
  CHECK(bank.final_score == scores && bank.dive_number == numbers && bank.clip_id[5] == "c/5");
  CHECK(bank.metadata["source"] == "unit test");

  write_bank(dir / "short.bin", 6, numbers, scores, true);
  CHECK(throws_with([&] { fp::read_bank_bin((dir / "short.bin").string()); }, "runs past the end of the file"));
  write_text(dir / "foreign.bin", "PK\x03\x04 not a bank at all");
  CHECK(throws_with([&] { fp::read_bank_bin((dir / "foreign.bin").string()); }, "bad magic"));
  CHECK(throws_with([&] { fp::read_bank_bin((dir / "missing.bin").string()); }, "missing.bin: cannot open"));
  fs::remove_all(dir);
}

void test_select_falls_back_in_the_stated_order() {
  const fs::path dir = temp_dir();
  write_bank(dir / "bank.bin", 6, {"107B", "107B", "107B", "105B", "5253B", "205C"},
             {60.0f, 80.0f, 70.0f, 50.0f, 65.0f, 75.0f});
  const auto bank = fp::read_bank_bin((dir / "bank.bin").string());
  auto same = bank.select("107B");
  CHECK((same.indices == std::vector<std::int64_t>{0, 1, 2}) && !same.note);
  auto spread = bank.select(" 107B ", 2);
  CHECK((spread.indices == std::vector<std::int64_t>{0, 1}) && !spread.note);  // lowest and highest kept
  auto group = bank.select("109B");
  CHECK((group.indices == std::vector<std::int64_t>{0, 1, 2, 3}) && group.note &&
        *group.note == "no exemplar of dive 109b in the bank: using group 1 position B (105b, 107b)");
  auto any = bank.select("405C");
  CHECK(any.indices.size() == 6 && any.note && any.note->find("using exemplars of any dive") != std::string::npos);
  CHECK(bank.select("405C", 3).indices.size() == 3);
  auto unknown = fp::choose_exemplars(bank, std::nullopt, 10);
  CHECK(unknown.indices.size() == 6 && unknown.note && *unknown.note == fp::kNoDiveNumberNote);
  fp::ExemplarBank empty;
  CHECK(throws_with([&] { empty.select("107B"); }, "empty"));
  fs::remove_all(dir);
}

void test_spread_indices() {
  CHECK((fp::spread_indices({5, 1, 3}, 5) == std::vector<std::int64_t>{0, 1, 2}));
  CHECK(fp::spread_indices({5, 1, 3}, 0).empty());
  CHECK((fp::spread_indices({5, 1, 3, 2}, 2) == std::vector<std::int64_t>{0, 1}));  // lowest (1) and highest (5)
  CHECK((fp::spread_indices({5, 1, 3, 2}, 1) == std::vector<std::int64_t>{1}));
}

// ----------------------------------------------------------------------------- manifest

void test_manifest_verification_names_the_file() {
  const fs::path dir = temp_dir() / "pkg";
  fs::create_directories(dir);
  write_text(dir / "bank.bin", "abc");
  const fp::Json manifest = {
      {"format", "fineparser-package"}, {"format_version", 1}, {"scoring", {{"voter_number", 7}}},
      {"bank", {{"status", "bank"}, {"binary", "bank.bin"}}},
      {"files", {{"bank.bin", {{"sha256", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
                               {"size", 3}}}}}};
  write_text(dir / "manifest.json", manifest.dump());
  const auto package = fp::load_package(dir.string());
  CHECK(package.voter_number() == 7 && package.bank_bin_path() == (dir / "bank.bin").string());
  CHECK(package.engines().empty());
  write_text(dir / "bank.bin", "abd");
  CHECK(throws_with([&] { fp::load_package(dir.string()); }, "bank.bin: sha256 "));
  CHECK(!throws_with([&] { fp::load_package(dir.string(), false); }, ""));
  write_text(dir / "bank.bin", "ab");
  CHECK(throws_with([&] { fp::load_package(dir.string()); }, "size 2 bytes, the manifest says 3"));
  fs::remove(dir / "bank.bin");
  CHECK(throws_with([&] { fp::load_package(dir.string()); }, "listed in the manifest but missing"));
  write_text(dir / "manifest.json", "{\"format\": \"fineparser-package\", \"format_version\": 9}");
  CHECK(throws_with([&] { fp::load_package(dir.string()); }, "upgrade fineparser"));
  fs::remove(dir / "manifest.json");
  CHECK(throws_with([&] { fp::load_package(dir.string()); }, "is not a model package (no manifest.json)"));
  CHECK(throws_with([&] { fp::load_package((dir / "nope").string()); }, "no such package directory"));
  fs::remove_all(dir.parent_path());
}

// ----------------------------------------------------------------------------- timecodes, segmenters

void test_timecodes_csv_and_json() {
  const fs::path dir = temp_dir();
  write_text(dir / "t.csv", "start,end,dive_number\n# a comment\n5.0, 9.5 ,107B\n\n1,4\n");
  const auto dives = fp::read_timecodes((dir / "t.csv").string());
  CHECK(dives.size() == 2 && dives[0].start == 1.0 && dives[0].index == 1 && !dives[0].dive_number);
  CHECK(dives[1].dive_number && *dives[1].dive_number == "107b" && *dives[1].end == 9.5);
  CHECK(dives[1].source == "timecodes:t.csv");
  write_text(dir / "b.json", R"({"dives": [{"start_s": 0.72, "end_s": 4.72, "dive_number": "6245D", "final_score": 77.4}]})");
  const auto broadcast = fp::read_timecodes((dir / "b.json").string());
  CHECK(broadcast.size() == 1 && *broadcast[0].ground_truth_score == 77.4 && *broadcast[0].dive_number == "6245d");
  write_text(dir / "bad.csv", "1,2\n3,abc\n");
  CHECK(throws_with([&] { fp::read_timecodes((dir / "bad.csv").string()); }, "bad.csv, line 2: end 'abc' is not"));
  write_text(dir / "back.csv", "5,4\n");
  CHECK(throws_with([&] { fp::read_timecodes((dir / "back.csv").string()); }, "dive 1 ends (4.0) before it starts (5.0)"));
  write_text(dir / "empty.csv", "start,end\n");
  CHECK(throws_with([&] { fp::read_timecodes((dir / "empty.csv").string()); }, "no dives in the timecodes file"));
  CHECK(throws_with([&] { fp::read_timecodes((dir / "none.csv").string()); }, "cannot read timecodes file"));
  CHECK(throws_with([] { fp::make_segmenter("operator"); }, "unknown --segment 'operator'"));
  fs::remove_all(dir);
}

void test_timecode_segmenter_starts_and_ends_at_frames() {
  fp::Dive a;
  a.start = 1.0;
  a.end = 2.0;
  fp::Dive b;
  b.start = 3.0;
  b.end = 10.0;
  fp::TimecodeSegmenter segmenter({a, b}, "timecodes:x");
  CHECK(segmenter.feed(0.5).empty());
  auto events = segmenter.feed(1.0);
  CHECK(events.size() == 1 && events[0].kind == fp::SegmentEvent::Kind::kStart);
  CHECK(segmenter.feed(1.96).empty());
  events = segmenter.feed(2.0);  // ends are exclusive: the frame at 2.0 is not in the dive
  CHECK(events.size() == 1 && events[0].kind == fp::SegmentEvent::Kind::kEnd);
  CHECK(segmenter.feed(3.5).size() == 1);
  events = segmenter.finish(4.0, 0.04);  // the stream ended inside dive 2: it ends with the stream
  CHECK(events.size() == 1 && std::fabs(*events[0].dive->end - 4.04) < 1e-12);
  fp::ClipSegmenter clip;
  CHECK(clip.feed(0.0).size() == 1 && clip.feed(0.04).empty());
  CHECK(clip.finish(0.04, 0.04).size() == 1);
}

// ----------------------------------------------------------------------------- events

void test_event_lines() {
  // Events: one JSON line each, numbers that read back as the same doubles, ASCII only.
  std::ostringstream out;
  fp::EventWriter writer(out);
  const std::vector<double> values = {2.0, 0.1, -0.0, 1e-05, 1e16, 55.9889, 1.0 / 3.0, -3.0000000000000004};
  writer.publish("warning", {{"kind", "gap"}, {"message", "é\"\n"}, {"values", values}});
  writer.publish("warning", {{"kind", "gap"}});
  const std::string text = out.str();
  CHECK(std::count(text.begin(), text.end(), '\n') == 2);
  CHECK(std::all_of(text.begin(), text.end(), [](char c) { return static_cast<unsigned char>(c) < 128; }));
  const auto first = fp::Json::parse(text.substr(0, text.find('\n')));
  CHECK(first["seq"] == 0 && first["type"] == "warning" && first["kind"] == "gap" && first["message"] == "é\"\n");
  CHECK(first["values"].get<std::vector<double>>() == values);
  CHECK(std::signbit(first["values"][2].get<double>()));
  CHECK(first["wall_time"].get<std::string>().size() == 29);  // 2026-11-28T19:38:08.185+00:00
  CHECK(fp::Json::parse(text.substr(text.find('\n') + 1))["seq"] == 1);
  // Values are rounded as Python's round() rounds them; error messages quote numbers as repr() does.
  CHECK(fp::python_round(2.675, 2) == 2.67);  // 2.675 is 2.67499999... in binary, as Python rounds it
  CHECK(fp::python_round(0.125, 2) == 0.12);  // an exact tie goes to even
  CHECK(fp::python_repr(2.0) == "2.0");
  CHECK(fp::python_repr(1e-05) == "1e-05");
  CHECK(fp::python_repr(1e16) == "1e+16");
  CHECK(fp::python_repr(55.9889) == "55.9889");
}

void test_score_event_means_and_clipping() {
  const fs::path dir = temp_dir();
  write_bank(dir / "bank.bin", 3, {"107B", "107B", "107B"}, {60.0f, 80.0f, 70.0f});
  const auto bank = fp::read_bank_bin((dir / "bank.bin").string());
  fp::Dive dive;
  dive.index = 2;
  dive.start = 1.0;
  dive.end = 5.0;
  dive.dive_number = "107B";
  std::vector<double> times;
  for (int i = 0; i < 100; ++i) times.push_back(1.0 + 0.04 * i);
  const auto selection = bank.select("107B", 10);
  fp::PairOutputs pair{{1.0f, -2.0f, 0.5f}, {0.3f, 0.5f, 0.2f, -0.6f, -1.0f, -0.4f, 0.15f, 0.25f, 0.1f}};
  const auto event = fp::score_event(dive, times, {40, 500}, bank, selection, fp::mean_pair_outputs({pair}), 1, "unit",
                                     12.345);
  CHECK(event["score"].get<double>() == fp::python_round((61.0 + 78.0 + 70.5) / 3.0, 4));
  CHECK(event["transition_frames"] == fp::Json({40, 95}));  // clipped into the 96 sampled frames
  CHECK(event["frames_in_dive"] == 100 && event["exemplars"].size() == 3 && event["exemplar_fallback"].is_null());
  CHECK(event["latency_ms"].get<double>() == 12.35 || event["latency_ms"].get<double>() == 12.34);
  CHECK(event.find("ground_truth_score") == event.end());
  std::vector<std::string> keys;
  for (const auto& [key, value] : event.items()) keys.push_back(key);
  CHECK((keys == std::vector<std::string>{"dive", "dive_number", "score", "mean_delta", "step_deltas", "transitions_s",
                                          "transition_frames", "start_s", "end_s", "frames_in_dive", "segments",
                                          "exemplars",
                                          "exemplar_fallback", "fallback_order", "backend", "latency_ms"}));
  fs::remove_all(dir);
}

void test_edge_offsets_spans_and_means() {
  using Spans = std::vector<std::pair<std::int64_t, std::int64_t>>;
  fp::EdgeOffsets offsets{{-0.08, 0.0, 0.08}, {-0.08, 0.0}};
  CHECK(offsets.lead_s() == 0.08);
  // 25 fps, 3 lead frames, 50 dive frames (indices 3..52): 0.08 s = 2 frames
  CHECK((offsets.spans(3, 50, 0.04) == Spans{{3, 52}, {1, 50}, {1, 52}, {3, 50}, {5, 50}, {5, 52}}));
  // no lead frames: the earlier starts collapse onto the dive's first frame and count once
  CHECK((offsets.spans(0, 50, 0.04) == Spans{{0, 49}, {0, 47}, {2, 47}, {2, 49}}));
  // 50 fps: 4 frames; a 3-frame dive keeps at least one frame per span
  CHECK((offsets.spans(0, 3, 0.02) == Spans{{0, 2}, {0, 0}, {2, 2}}));
  CHECK((offsets.spans(4, 1, 0.0) == Spans{{4, 4}}));  // one frame: no interval, the dive as found
  CHECK((fp::EdgeOffsets{}.spans(2, 10, 0.04) == Spans{{2, 11}}));
  CHECK(fp::frame_interval({0.0, 0.25, 0.5, 1.0}) == 0.25 && fp::frame_interval({1.0, 1.5, 2.5}) == 0.75);
  const auto mean = fp::mean_pair_outputs({fp::PairOutputs{{1.0f, 2.0f}, {1, 2, 3, 4, 5, 6}},
                                           fp::PairOutputs{{2.0f, 4.0f}, {3, 2, 1, 0, 1, 2}}});
  CHECK((mean.delta == std::vector<double>{1.5, 3.0}) && (mean.step_deltas == std::vector<double>{2, 2, 2, 2, 3, 4}));
  const fs::path dir = temp_dir() / "pkg_edges";
  fs::create_directories(dir);
  auto with_offsets = [&](const fp::Json& offsets_json) {
    write_text(dir / "manifest.json", fp::Json{{"format", "fineparser-package"}, {"format_version", 1},
                                               {"scoring", {{"edge_offsets_s", offsets_json}}}, {"files", fp::Json::object()}}
                                          .dump());
    return fp::load_package(dir.string());
  };
  CHECK((with_offsets({{"start", {-0.1, 0}}, {"end", {0}}}).edge_offsets().start == std::vector<double>{-0.1, 0.0}));
  CHECK(throws_with([&] { with_offsets({{"start", {-0.1}}, {"end", {0}}}).edge_offsets(); }, "must contain 0"));
  CHECK(throws_with([&] { with_offsets({{"start", {0}}, {"end", {0, 0.1}}}).edge_offsets(); }, "must be <= 0"));
  CHECK(throws_with([&] { with_offsets({{"start", {0, 2.0}}, {"end", {0}}}).edge_offsets(); }, "within 1.0 s"));
  CHECK(throws_with([&] { with_offsets({{"start", fp::Json::array()}, {"end", {0}}}).edge_offsets(); }, "non-empty"));
  CHECK(throws_with([&] { with_offsets({{"start", {0}}}).edge_offsets(); }, "manifest.json: scoring.edge_offsets_s"));
  fs::remove_all(dir);
}

}  // namespace

int main() {
  const std::vector<std::pair<const char*, void (*)()>> tests = {
      {"sha256_known_vectors", test_sha256_known_vectors},
      {"sampling_spans_the_dive_and_repeats_short_ones", test_sampling_spans_the_dive_and_repeats_short_ones},
      {"crop_and_reduction_factors", test_crop_and_reduction_factors},
      {"triangle_filter_rows_sum_to_one_and_identity_at_scale_one",
       test_triangle_filter_rows_sum_to_one_and_identity_at_scale_one},
      {"constant_frames_stay_constant_and_channels_swap", test_constant_frames_stay_constant_and_channels_swap},
      {"box_reduce_equals_opencv_inter_area", test_box_reduce_equals_opencv_inter_area},
      {"prepare_is_the_centre_crop_of_the_resize", test_prepare_is_the_centre_crop_of_the_resize},
      {"numpy_pairwise_sum_order", test_numpy_pairwise_sum_order},
      {"bank_bin_reads_back_and_refuses_damage", test_bank_bin_reads_back_and_refuses_damage},
      {"select_falls_back_in_the_stated_order", test_select_falls_back_in_the_stated_order},
      {"spread_indices", test_spread_indices},
      {"manifest_verification_names_the_file", test_manifest_verification_names_the_file},
      {"timecodes_csv_and_json", test_timecodes_csv_and_json},
      {"timecode_segmenter_starts_and_ends_at_frames", test_timecode_segmenter_starts_and_ends_at_frames},
      {"event_lines", test_event_lines},
      {"score_event_means_and_clipping", test_score_event_means_and_clipping},
      {"edge_offsets_spans_and_means", test_edge_offsets_spans_and_means},
  };
  for (const auto& [name, test] : tests) {
    const int before = failures;
    try {
      test();
    } catch (const std::exception& exc) {
      std::cerr << name << ": unexpected exception: " << exc.what() << '\n';
      ++failures;
    }
    std::cout << (failures == before ? "ok    " : "FAIL  ") << name << '\n';
  }
  std::cout << (failures ? "FAILED: " : "all passed: ") << failures << " failed check(s)\n";
  return failures ? 1 : 0;
}
