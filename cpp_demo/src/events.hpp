// The runtime's event stream: flat JSON objects with type, seq, wall_time and type-specific fields,
// one per line. The contract is docs/events.schema.json, which the Python runtime (runtime/events.py)
// writes too; tests/test_cpp_demo.py validates both against it and compares their numbers with a
// tolerance, not their text.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>

#include "package.hpp"

namespace fineparser {

// One JSON value on one line: nlohmann's dump (shortest text that reads back as the same double,
// non-ASCII as \u escapes, invalid UTF-8 replaced). Events and fineparser_tool's reports use it.
std::string json_line(const Json& value);
// Python's round(value, digits) for a float: correctly rounded, halves to even on exact ties. The
// events carry values rounded as runtime/scorer.py rounds them (this is about the value, not its text).
double python_round(double value, int digits);
// Python's repr(float): the shortest text that reads back as the same double ("0.1", "2.0", "1e-05").
// Only for error messages that quote a number as the Python runtime's do (segments.cpp).
std::string python_repr(double value);
// Python's json.dumps(value) text, for the same error messages; never for events.
std::string python_dumps(const Json& value);
// UTC now as datetime.now(timezone.utc).isoformat(timespec="milliseconds"): 2026-11-28T19:38:08.185+00:00.
std::string utc_now_iso();

// Numbers, stamps and writes events (one JSON line each, flushed) to a stream.
class EventWriter {
 public:
  explicit EventWriter(std::ostream& out) : out_(out) {}
  // type is one of stream, dive_start, dive_end, score, warning; `fields` follow type, seq, wall_time.
  Json publish(const std::string& type, const Json& fields);
  std::int64_t count() const { return seq_; }

 private:
  std::ostream& out_;
  std::int64_t seq_ = 0;
};

}  // namespace fineparser
