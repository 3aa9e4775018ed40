// Minimal UTF-8 stepping used by the tokenizer: strict decoding (per the Unicode table of
// well-formed sequences) and lossy repair with U+FFFD per maximal invalid subpart, the same
// rule as Rust's String::from_utf8_lossy, so decoded text matches the reference tokenizer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace kvlab::utf8 {

/// Result of decoding one code point at a position.
struct Step {
  std::size_t length = 1;  ///< bytes consumed (>= 1); for invalid input, the maximal subpart
  std::uint32_t cp = 0;    ///< code point when valid
  bool valid = false;
  bool truncated = false;  ///< invalid only because the input ended mid-sequence
};

/// Decode the code point starting at s[pos] (pos < s.size()).
Step step(std::string_view s, std::size_t pos);

/// Append the UTF-8 encoding of `cp` (must be a scalar value).
void append(std::string& out, std::uint32_t cp);

/// Copy of `s` with each maximal invalid subpart replaced by U+FFFD.
std::string make_valid(std::string_view s);

}  // namespace kvlab::utf8
