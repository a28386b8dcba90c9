#include "segments.hpp"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "events.hpp"
#include "package.hpp"

namespace fineparser {

namespace {

// Python's float(value) for a JSON number or a numeric string; nullopt when it is neither.
std::optional<double> to_number(const Json& value) {
  if (value.is_number()) return value.get<double>();
  if (!value.is_string()) return std::nullopt;
  const std::string text = strip(value.get<std::string>());
  if (text.empty()) return std::nullopt;
  char* end = nullptr;
  const double number = std::strtod(text.c_str(), &end);
  if (end != text.c_str() + text.size()) return std::nullopt;
  return number;
}

// Python's repr() of a JSON value in an error message ('abc' for strings).
std::string value_repr(const Json& value) {
  if (value.is_string()) return "'" + value.get<std::string>() + "'";
  return python_dumps(value);
}

double number_or_error(const Json& value, const std::string& path, int line, const std::string& column) {
  const auto number = to_number(value);
  if (!number) {
    throw SegmentError(path + ", line " + std::to_string(line) + ": " + column + " " + value_repr(value) +
                       " is not a number of seconds");
  }
  return *number;
}

// One line of Python's csv.reader (default dialect: commas, double quotes, "" for a quote).
std::vector<std::string> csv_fields(const std::string& line) {
  std::vector<std::string> fields;
  std::string field;
  bool quoted = false, at_start = true;
  for (std::size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (quoted) {
      if (c == '"' && i + 1 < line.size() && line[i + 1] == '"') {
        field.push_back('"');
        ++i;
      } else if (c == '"') {
        quoted = false;
      } else {
        field.push_back(c);
      }
    } else if (c == '"' && at_start) {
      quoted = true;
      at_start = false;
    } else if (c == ',') {
      fields.push_back(field);
      field.clear();
      at_start = true;
    } else {
      field.push_back(c);
      at_start = false;
    }
  }
  if (!line.empty()) fields.push_back(field);
  return fields;
}

std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> lines;
  std::string line;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '\n' || c == '\r') {
      lines.push_back(line);
      line.clear();
      if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') ++i;
    } else {
      line.push_back(c);
    }
  }
  if (!line.empty()) lines.push_back(line);
  return lines;
}

std::string lower(std::string text) {
  for (auto& c : text) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return text;
}

std::vector<Dive> read_json_dives(const std::string& path, const std::string& text, const std::string& source) {
  Json data;
  try {
    data = Json::parse(text);
  } catch (const Json::exception& exc) {
    throw SegmentError(path + ": not valid JSON (" + exc.what() + ")");
  }
  const Json items = data.is_object() ? data.value("dives", Json()) : data;
  if (!items.is_array()) throw SegmentError(path + ": expected a list of dives or an object with 'dives'");
  std::vector<Dive> dives;
  int i = 0;
  for (const auto& item : items) {
    ++i;
    if (!item.is_object()) throw SegmentError(path + ": dive " + std::to_string(i) + " is not an object with start/end");
    const Json start = item.contains("start_s") ? item["start_s"] : item.value("start", Json());
    const Json end = item.contains("end_s") ? item["end_s"] : item.value("end", Json());
    if (start.is_null() || end.is_null()) {
      throw SegmentError(path + ": dive " + std::to_string(i) + " has no start_s/end_s (or start/end)");
    }
    Dive dive;
    dive.index = i;
    dive.start = number_or_error(start, path, i, "start");
    dive.end = number_or_error(end, path, i, "end");
    const Json number = item.value("dive_number", Json());
    // Python: canonical_dive_number(number) if number else None (an empty string, 0 or null: no dive number).
    const bool truthy = !(number.is_null() || (number.is_string() && number.get<std::string>().empty()) ||
                          (number.is_number() && number.get<double>() == 0.0) ||
                          (number.is_boolean() && !number.get<bool>()));
    if (truthy) {
      dive.dive_number = canonical_dive_number(number.is_string() ? number.get<std::string>() : python_dumps(number));
    }
    const Json score = item.value("final_score", Json());
    if (!score.is_null()) {
      const auto value = to_number(score);
      if (!value) throw SegmentError(path + ": dive " + std::to_string(i) + " final_score " + value_repr(score) +
                                     " is not a number");
      dive.ground_truth_score = *value;
    }
    dive.source = source;
    dives.push_back(dive);
  }
  return dives;
}

std::vector<Dive> read_csv_dives(const std::string& path, const std::string& text, const std::string& source) {
  std::vector<Dive> dives;
  const auto lines = split_lines(text);
  for (std::size_t n = 0; n < lines.size(); ++n) {
    const int line = static_cast<int>(n) + 1;
    const auto row = csv_fields(lines[n]);
    std::string joined;
    for (const auto& field : row) joined += field;
    if (row.empty() || strip(joined).empty() || strip(row[0]).rfind('#', 0) == 0) continue;
    if (line == 1 && (lower(strip(row[0])) == "start" || lower(strip(row[0])) == "start_s")) continue;
    if (row.size() < 2) {
      throw SegmentError(path + ", line " + std::to_string(line) + ": expected start,end[,dive_number], got '" +
                         row.at(0) + "'");
    }
    Dive dive;
    dive.index = static_cast<int>(dives.size()) + 1;
    dive.start = number_or_error(Json(strip(row[0])), path, line, "start");
    dive.end = number_or_error(Json(strip(row[1])), path, line, "end");
    if (row.size() > 2 && !strip(row[2]).empty()) dive.dive_number = canonical_dive_number(row[2]);
    dive.source = source;
    dives.push_back(dive);
  }
  return dives;
}

}  // namespace

std::vector<Dive> read_timecodes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw SegmentError("cannot read timecodes file " + path + ": " + std::strerror(errno));
  std::ostringstream buffer;
  buffer << in.rdbuf();
  const std::string text = buffer.str();
  const std::filesystem::path file(path);
  const std::string source = "timecodes:" + file.filename().string();
  const std::string trimmed = strip(text);
  const bool json = lower(file.extension().string()) == ".json" ||
                    (!trimmed.empty() && (trimmed[0] == '{' || trimmed[0] == '['));
  std::vector<Dive> dives = json ? read_json_dives(path, text, source) : read_csv_dives(path, text, source);
  if (dives.empty()) throw SegmentError(path + ": no dives in the timecodes file");
  for (const auto& dive : dives) {
    if (*dive.end <= dive.start) {
      throw SegmentError(path + ": dive " + std::to_string(dive.index) + " ends (" + python_repr(*dive.end) +
                         ") before it starts (" + python_repr(dive.start) + ")");
    }
  }
  std::stable_sort(dives.begin(), dives.end(), [](const Dive& a, const Dive& b) { return a.start < b.start; });
  for (std::size_t i = 0; i < dives.size(); ++i) dives[i].index = static_cast<int>(i) + 1;
  return dives;
}

std::vector<SegmentEvent> ClipSegmenter::feed(double time) {
  if (dive_) return {};
  dive_ = std::make_unique<Dive>();
  dive_->index = 1;
  dive_->start = time;
  dive_->source = "clip";
  return {{SegmentEvent::Kind::kStart, dive_.get()}};
}

std::vector<SegmentEvent> ClipSegmenter::finish(std::optional<double> last_time, double frame_duration) {
  if (!dive_ || !last_time) return {};
  dive_->end = *last_time + frame_duration;
  return {{SegmentEvent::Kind::kEnd, dive_.get()}};
}

TimecodeSegmenter::TimecodeSegmenter(std::vector<Dive> dives, std::string name) : name_(std::move(name)) {
  for (auto& dive : dives) dives_.push_back(std::make_unique<Dive>(std::move(dive)));
}

std::vector<SegmentEvent> TimecodeSegmenter::feed(double time) {
  std::vector<SegmentEvent> events;
  while (next_ < dives_.size() && time >= dives_[next_]->start) {
    open_.push_back(dives_[next_].get());
    events.push_back({SegmentEvent::Kind::kStart, dives_[next_].get()});
    ++next_;
  }
  for (auto it = open_.begin(); it != open_.end();) {
    if ((*it)->end && time >= *(*it)->end) {
      events.push_back({SegmentEvent::Kind::kEnd, *it});
      it = open_.erase(it);
    } else {
      ++it;
    }
  }
  return events;
}

std::vector<SegmentEvent> TimecodeSegmenter::finish(std::optional<double> last_time, double frame_duration) {
  std::vector<SegmentEvent> events;
  for (Dive* dive : open_) {
    if (last_time) {
      const double stream_end = *last_time + frame_duration;
      if (dive->end && *dive->end > stream_end + 1e-6) {  // runtime.segments.cut_short_reason, word for word
        char reason[160];
        std::snprintf(reason, sizeof reason, "the stream ended at %.2f s, before the dive's end at %.2f s", stream_end,
                      *dive->end);
        dive->incomplete_reason = reason;
      }
      dive->end = std::min(dive->end && *dive->end != 0.0 ? *dive->end : stream_end, stream_end);
    }
    events.push_back({SegmentEvent::Kind::kEnd, dive});
  }
  open_.clear();
  return events;
}

std::vector<Dive> TimecodeSegmenter::unreached() const {
  std::vector<Dive> out;
  for (std::size_t i = next_; i < dives_.size(); ++i) out.push_back(*dives_[i]);
  return out;
}

std::unique_ptr<Segmenter> make_segmenter(const std::string& text) {
  if (text == "clip") return std::make_unique<ClipSegmenter>();
  const std::string prefix = "timecodes:";
  if (text.rfind(prefix, 0) == 0) {
    const std::string path = text.substr(prefix.size());
    return std::make_unique<TimecodeSegmenter>(read_timecodes(path),
                                               prefix + std::filesystem::path(path).filename().string());
  }
  throw SegmentError("unknown --segment '" + text + "': use clip or timecodes:FILE (operator mode is in the Python "
                     "runtime only)");
}

}  // namespace fineparser
