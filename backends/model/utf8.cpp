#include "backends/model/utf8.hpp"

namespace kvlab::utf8 {

namespace {
bool in(unsigned char c, unsigned lo, unsigned hi) { return c >= lo && c <= hi; }
}  // namespace

Step step(std::string_view s, std::size_t pos) {
  const auto b0 = static_cast<unsigned char>(s[pos]);
  Step r;
  if (b0 < 0x80) {
    r.cp = b0;
    r.valid = true;
    return r;
  }
  // Expected length and the allowed range of the second byte (the rest are 80..BF).
  std::size_t len = 0;
  unsigned lo = 0x80;
  unsigned hi = 0xBF;
  if (in(b0, 0xC2, 0xDF)) {
    len = 2;
  } else if (b0 == 0xE0) {
    len = 3, lo = 0xA0;
  } else if (in(b0, 0xE1, 0xEC) || in(b0, 0xEE, 0xEF)) {
    len = 3;
  } else if (b0 == 0xED) {
    len = 3, hi = 0x9F;  // excludes surrogates
  } else if (b0 == 0xF0) {
    len = 4, lo = 0x90;
  } else if (in(b0, 0xF1, 0xF3)) {
    len = 4;
  } else if (b0 == 0xF4) {
    len = 4, hi = 0x8F;  // <= U+10FFFF
  } else {
    return r;  // stray continuation byte or C0/C1/F5..FF: one byte, invalid
  }
  std::uint32_t cp = b0 & (len == 2 ? 0x1Fu : len == 3 ? 0x0Fu : 0x07u);
  std::size_t i = 1;
  for (; i < len; ++i) {
    if (pos + i >= s.size()) {
      r.length = i;
      r.truncated = true;
      return r;
    }
    const auto b = static_cast<unsigned char>(s[pos + i]);
    const bool ok = i == 1 ? in(b, lo, hi) : in(b, 0x80, 0xBF);
    if (!ok) {
      r.length = i;
      return r;
    }
    cp = (cp << 6) | (b & 0x3Fu);
  }
  r.length = len;
  r.cp = cp;
  r.valid = true;
  return r;
}

void append(std::string& out, std::uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

std::string make_valid(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  std::size_t pos = 0;
  while (pos < s.size()) {
    const Step st = step(s, pos);
    if (st.valid) {
      out.append(s.substr(pos, st.length));
    } else {
      append(out, 0xFFFD);
    }
    pos += st.length;
  }
  return out;
}

}  // namespace kvlab::utf8
