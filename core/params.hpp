// Typed, validated, defaulted policy parameters parsed from "name:key=value,key=value".
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace kvlab {

enum class ParamType {
  Int,     // whole number
  Float,   // real number
  Bool,    // true/false/1/0
  String,  // free text (e.g. a file path)
  Tokens,  // an amount of context: whole tokens ("8192") or a fraction of the context ("0.1")
};

/// What a parameter means to code outside the policy (the CLI, the demo, the tests), so that
/// none of them has to guess it from the parameter's key.
enum class ParamRole {
  None,
  Budget,   // Tokens: the HBM budget; tools that compare policies give them all the same one
  Window,   // Int: recent tokens always kept
  Sinks,    // Int: initial tokens always kept (attention sinks)
  Indexer,  // String: path of a learned indexer checkpoint
};

/// Allowed values of an Int, Float or Tokens parameter (for Tokens: the token count or the
/// fraction, whichever was given). Unset bounds are open.
struct ParamRange {
  std::optional<double> min;
  std::optional<double> max;
  bool min_exclusive = false;
};

/// One declared parameter. An empty default with `required` means the user must give it.
/// Params::resolve checks the type and the range of every value, defaults included, so a
/// policy need not repeat those checks:
///   ParamSpec{"tau", ParamType::Int, "64", "steps between refreshes"}.at_least(1)
struct ParamSpec {
  std::string key;
  ParamType type = ParamType::Int;
  std::string default_value;
  std::string help;
  bool required = false;
  ParamRange range{};
  ParamRole role = ParamRole::None;
  /// False: the canonical spec leaves the key out while it holds its default text, so a
  /// parameter added to a policy later does not rename (and re-hash) every result of it.
  bool canonical_at_default = true;

  [[nodiscard]] ParamSpec at_least(double lo) const;
  [[nodiscard]] ParamSpec greater_than(double lo) const;
  [[nodiscard]] ParamSpec at_most(double hi) const;
  [[nodiscard]] ParamSpec with_role(ParamRole r) const;
  [[nodiscard]] ParamSpec omitted_at_default() const;
};

/// A context amount: either absolute tokens or a fraction of the context length.
struct TokenAmount {
  double value = 0;
  bool fraction = false;
  /// Tokens this amount means for a context of `context_tokens`.
  [[nodiscard]] int64_t resolve(int64_t context_tokens) const;
  [[nodiscard]] std::string str() const;
};

/// "sliding_window:window=8192,sinks=64" split into a name and raw key/value text.
struct PolicySpec {
  std::string name;
  std::map<std::string, std::string> args;

  /// Throws UsageError on malformed text (empty name, missing '=', repeated key).
  static PolicySpec parse(std::string_view text);
  [[nodiscard]] std::string str() const;
};

/// Parameter values after validation against the specs; every declared key has a value.
class Params {
 public:
  /// Validates `given` against `specs`: unknown keys, missing required keys, values that do not
  /// parse as their type and values outside their range throw UsageError naming the policy,
  /// the key and the valid keys or values. A Tokens fraction must be at most 1 (the whole
  /// context).
  static Params resolve(std::string_view policy, const std::vector<ParamSpec>& specs,
                        const std::map<std::string, std::string>& given);

  [[nodiscard]] int64_t get_int(const std::string& key) const;
  [[nodiscard]] double get_float(const std::string& key) const;
  [[nodiscard]] bool get_bool(const std::string& key) const;
  [[nodiscard]] const std::string& get_string(const std::string& key) const;
  [[nodiscard]] TokenAmount get_tokens(const std::string& key) const;

  /// Every key with its resolved value, for the "resolved configuration" written beside results.
  [[nodiscard]] const std::map<std::string, std::string>& values() const { return values_; }
  /// Canonical spec text: "name:k1=v1,k2=v2" in key order, defaults included (but for keys
  /// declared omitted_at_default that hold their default).
  [[nodiscard]] std::string canonical(std::string_view policy) const;

 private:
  std::map<std::string, std::string> values_;
  std::map<std::string, ParamType> types_;
  std::set<std::string> omitted_;  // keys left out of canonical()
  std::string policy_;
  [[nodiscard]] const std::string& raw(const std::string& key, ParamType type) const;
};

/// Parses one value as `type`; returns false if it does not parse.
bool param_value_valid(ParamType type, const std::string& text);
std::string_view param_type_name(ParamType type);
std::string_view param_role_name(ParamRole role);
/// A number as parameter text, shortest form ("%g": 0.9 → "0.9"), e.g. for a default taken from
/// a constant.
std::string param_number_text(double value);
/// The range as text, e.g. ">= 0" or "in (0, 1]"; empty when unbounded.
std::string param_range_text(const ParamRange& range);

}  // namespace kvlab
