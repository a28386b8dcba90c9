// The runtime's event stream (runtime/events.py): flat JSON objects with type, seq, wall_time and
// type-specific fields, one per line, formatted as Python's json.dumps formats them.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>

#include "package.hpp"

namespace fineparser {

// Python's json.dumps(value) (", " and ": " separators, ASCII-only, floats as repr()).
std::string python_dumps(const Json& value);
// Python's repr(float): the shortest text that reads back as the same double ("0.1", "2.0", "1e-05").
std::string python_repr(double value);
// Python's round(value, digits) for a float: correctly rounded, halves to even on exact ties.
double python_round(double value, int digits);
// UTC now as datetime.now(timezone.utc).isoformat(timespec="milliseconds").
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
