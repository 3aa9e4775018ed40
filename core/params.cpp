#include "core/params.hpp"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <optional>
#include <set>

#include "core/error.hpp"

namespace kvlab {
namespace {

bool parse_int(const std::string& s, int64_t& out) {
  const auto* end = s.data() + s.size();
  auto [p, ec] = std::from_chars(s.data(), end, out);
  return ec == std::errc() && p == end && !s.empty();
}

bool parse_float(const std::string& s, double& out) {
  if (s.empty()) return false;
  try {
    size_t used = 0;
    out = std::stod(s, &used);
    return used == s.size() && std::isfinite(out);
  } catch (const std::exception&) {
    return false;
  }
}

bool parse_bool(const std::string& s, bool& out) {
  if (s == "true" || s == "1" || s == "yes" || s == "on") return out = true, true;
  if (s == "false" || s == "0" || s == "no" || s == "off") return out = false, true;
  return false;
}

bool parse_tokens(const std::string& s, TokenAmount& out) {
  int64_t whole = 0;
  if (parse_int(s, whole)) {
    out = {static_cast<double>(whole), false};
    return true;
  }
  double frac = 0;
  if (parse_float(s, frac)) {
    out = {frac, true};
    return true;
  }
  return false;
}

std::string number_text(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

/// The numeric value of a valid Int, Float or Tokens value (for Tokens: count or fraction).
std::optional<double> numeric_value(ParamType type, const std::string& text, bool& fraction) {
  fraction = false;
  int64_t i = 0;
  double d = 0;
  TokenAmount t;
  switch (type) {
    case ParamType::Int: return parse_int(text, i) ? std::optional<double>(static_cast<double>(i)) : std::nullopt;
    case ParamType::Float: return parse_float(text, d) ? std::optional<double>(d) : std::nullopt;
    case ParamType::Tokens:
      if (!parse_tokens(text, t)) return std::nullopt;
      fraction = t.fraction;
      return t.value;
    case ParamType::Bool:
    case ParamType::String: return std::nullopt;
  }
  return std::nullopt;
}

bool below_min(const ParamRange& r, double v) {
  return r.min && (r.min_exclusive ? v <= *r.min : v < *r.min);
}

/// Why `value` is outside the spec's range, or an empty string if it is inside.
std::string range_violation(const ParamSpec& spec, const std::string& value) {
  bool fraction = false;
  const std::optional<double> v = numeric_value(spec.type, value, fraction);
  if (!v) return "";
  const ParamRange& r = spec.range;
  if (below_min(r, *v) || (r.max && *v > *r.max)) {
    if (r.min && r.max) return "must be " + param_range_text(r) + ", got " + value;
    if (r.max) return "must be at most " + number_text(*r.max) + ", got " + value;
    const bool positive = *r.min == 0 ? r.min_exclusive : (*r.min == 1 && !r.min_exclusive && spec.type == ParamType::Int);
    if (positive) return "must be positive, got " + value;
    if (*r.min == 0) return "must not be negative, got " + value;
    return std::string("must be ") + (r.min_exclusive ? "greater than " : "at least ") + number_text(*r.min) +
           ", got " + value;
  }
  if (fraction && *v > 1) return "is a fraction larger than the whole context (" + value + ")";
  return "";
}

std::string valid_keys(const std::vector<ParamSpec>& specs) {
  std::string out;
  for (const auto& s : specs) out += (out.empty() ? "" : ", ") + s.key;
  return out.empty() ? "none" : out;
}

}  // namespace

int64_t TokenAmount::resolve(int64_t context_tokens) const {
  // Compared as doubles before any cast: a whole amount above the context (up to 2^63 - 1,
  // which a double rounds up to 2^63) means the whole context.
  if (!fraction) return value >= static_cast<double>(context_tokens) ? context_tokens : static_cast<int64_t>(value);
  return static_cast<int64_t>(std::floor(value * static_cast<double>(context_tokens)));
}

std::string TokenAmount::str() const {
  if (!fraction) return std::to_string(static_cast<int64_t>(value));
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", value);
  return buf;
}

ParamSpec ParamSpec::at_least(double lo) const {
  ParamSpec s = *this;
  s.range.min = lo;
  s.range.min_exclusive = false;
  return s;
}

ParamSpec ParamSpec::greater_than(double lo) const {
  ParamSpec s = *this;
  s.range.min = lo;
  s.range.min_exclusive = true;
  return s;
}

ParamSpec ParamSpec::at_most(double hi) const {
  ParamSpec s = *this;
  s.range.max = hi;
  return s;
}

ParamSpec ParamSpec::with_role(ParamRole r) const {
  ParamSpec s = *this;
  s.role = r;
  return s;
}

ParamSpec ParamSpec::omitted_at_default() const {
  ParamSpec s = *this;
  s.canonical_at_default = false;
  return s;
}

std::string param_number_text(double value) { return number_text(value); }

std::string param_range_text(const ParamRange& r) {
  if (r.min && r.max) {
    return std::string("in ") + (r.min_exclusive ? "(" : "[") + number_text(*r.min) + ", " + number_text(*r.max) + "]";
  }
  if (r.min) return (r.min_exclusive ? "> " : ">= ") + number_text(*r.min);
  if (r.max) return "<= " + number_text(*r.max);
  return "";
}

std::string_view param_role_name(ParamRole role) {
  switch (role) {
    case ParamRole::None: return "none";
    case ParamRole::Budget: return "budget";
    case ParamRole::Window: return "window";
    case ParamRole::Sinks: return "sinks";
    case ParamRole::Indexer: return "indexer";
  }
  return "?";
}

std::string_view param_type_name(ParamType type) {
  switch (type) {
    case ParamType::Int: return "int";
    case ParamType::Float: return "float";
    case ParamType::Bool: return "bool";
    case ParamType::String: return "string";
    case ParamType::Tokens: return "tokens|fraction";
  }
  return "?";
}

bool param_value_valid(ParamType type, const std::string& text) {
  int64_t i = 0;
  double d = 0;
  bool b = false;
  TokenAmount t;
  switch (type) {
    case ParamType::Int: return parse_int(text, i);
    case ParamType::Float: return parse_float(text, d);
    case ParamType::Bool: return parse_bool(text, b);
    case ParamType::String: return true;
    case ParamType::Tokens: return parse_tokens(text, t);
  }
  return false;
}

PolicySpec PolicySpec::parse(std::string_view text) {
  PolicySpec spec;
  const auto colon = text.find(':');
  spec.name = std::string(text.substr(0, colon));
  if (spec.name.empty()) throw UsageError("--policy: empty policy name in '" + std::string(text) + "'");
  if (colon == std::string_view::npos) return spec;
  std::string_view rest = text.substr(colon + 1);
  while (!rest.empty()) {
    const auto comma = rest.find(',');
    const std::string_view item = rest.substr(0, comma);
    const auto eq = item.find('=');
    if (eq == std::string_view::npos || eq == 0) {
      throw UsageError("--policy " + spec.name + ": expected key=value, got '" + std::string(item) + "'");
    }
    const std::string key(item.substr(0, eq));
    if (!spec.args.emplace(key, std::string(item.substr(eq + 1))).second) {
      throw UsageError("--policy " + spec.name + ": parameter '" + key + "' given twice");
    }
    if (comma == std::string_view::npos) break;
    rest = rest.substr(comma + 1);
  }
  return spec;
}

std::string PolicySpec::str() const {
  std::string out = name;
  char sep = ':';
  for (const auto& [k, v] : args) {
    out += sep + k + "=" + v;
    sep = ',';
  }
  return out;
}

Params Params::resolve(std::string_view policy, const std::vector<ParamSpec>& specs,
                       const std::map<std::string, std::string>& given) {
  Params p;
  p.policy_ = std::string(policy);
  std::set<std::string> known;
  for (const auto& s : specs) known.insert(s.key);
  for (const auto& [key, value] : given) {
    if (known.count(key) == 0) {
      throw UsageError("policy " + p.policy_ + ": unknown parameter '" + key + "' (valid: " + valid_keys(specs) + ")");
    }
  }
  for (const auto& s : specs) {
    auto it = given.find(s.key);
    if (it == given.end() && s.required) {
      throw UsageError("policy " + p.policy_ + ": parameter '" + s.key + "' is required (" + s.help + ")");
    }
    const std::string& value = it == given.end() ? s.default_value : it->second;
    if (!(s.type == ParamType::String || (value.empty() && !s.required && it == given.end())) &&
        !param_value_valid(s.type, value)) {
      throw UsageError("policy " + p.policy_ + ": parameter '" + s.key + "' must be " +
                       std::string(param_type_name(s.type)) + ", got '" + value + "'");
    }
    if (const std::string why = range_violation(s, value); !why.empty()) {
      throw UsageError("policy " + p.policy_ + ": parameter '" + s.key + "' " + why);
    }
    p.values_[s.key] = value;
    p.types_[s.key] = s.type;
    if (!s.canonical_at_default && value == s.default_value) p.omitted_.insert(s.key);
  }
  return p;
}

const std::string& Params::raw(const std::string& key, ParamType type) const {
  auto it = values_.find(key);
  if (it == values_.end()) throw UsageError("policy " + policy_ + ": undeclared parameter '" + key + "'");
  (void)type;
  return it->second;
}

int64_t Params::get_int(const std::string& key) const {
  int64_t v = 0;
  if (!parse_int(raw(key, ParamType::Int), v)) throw UsageError("policy " + policy_ + ": parameter '" + key + "' is not an int");
  return v;
}

double Params::get_float(const std::string& key) const {
  double v = 0;
  if (!parse_float(raw(key, ParamType::Float), v)) throw UsageError("policy " + policy_ + ": parameter '" + key + "' is not a number");
  return v;
}

bool Params::get_bool(const std::string& key) const {
  bool v = false;
  if (!parse_bool(raw(key, ParamType::Bool), v)) throw UsageError("policy " + policy_ + ": parameter '" + key + "' is not a bool");
  return v;
}

const std::string& Params::get_string(const std::string& key) const { return raw(key, ParamType::String); }

TokenAmount Params::get_tokens(const std::string& key) const {
  TokenAmount v;
  if (!parse_tokens(raw(key, ParamType::Tokens), v)) throw UsageError("policy " + policy_ + ": parameter '" + key + "' is not a token amount");
  return v;
}

std::string Params::canonical(std::string_view policy) const {
  std::string out(policy);
  char sep = ':';
  for (const auto& [k, v] : values_) {
    if (omitted_.count(k) != 0) continue;
    out += sep + k + "=" + v;
    sep = ',';
  }
  return out;
}

}  // namespace kvlab
