// Errors that reach the user. Every message is one line that names the file, field or
// parameter at fault; the CLI maps the type to the exit code (usage 2, failure 1).
#pragma once

#include <cstdio>
#include <stdexcept>
#include <string>

namespace kvlab {

/// Bad input: a file, dataset, value or runtime condition. Exit code 1.
class InputError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Bad command-line usage: unknown flag, unknown policy or parameter. Exit code 2.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// A policy broke its contract (exceeded its budget, planned a chunk that does not exist).
/// Exit code 1.
class PolicyContractError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// `text` with control characters escaped (a newline as \n, others as \xNN), so that a name
/// the user or a file supplied cannot split an error message over several lines.
inline std::string escape_control(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (const char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '\n') out += "\\n";
    else if (c == '\t') out += "\\t";
    else if (c == '\r') out += "\\r";
    else if (c < 0x20 || c == 0x7F) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02X", c);
      out += buf;
    } else {
      out += ch;
    }
  }
  return out;
}

}  // namespace kvlab
