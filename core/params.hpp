// Typed, validated, defaulted policy parameters parsed from "name:key=value,key=value".
#pragma once

#include <cstdint>
#include <map>
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

/// One declared parameter. An empty default with `required` means the user must give it.
struct ParamSpec {
  std::string key;
  ParamType type = ParamType::Int;
  std::string default_value;
  std::string help;
  bool required = false;
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
  /// Validates `given` against `specs`: unknown keys, missing required keys and values that do
  /// not parse as their type throw UsageError naming the policy, the key and the valid keys.
  static Params resolve(std::string_view policy, const std::vector<ParamSpec>& specs,
                        const std::map<std::string, std::string>& given);

  [[nodiscard]] int64_t get_int(const std::string& key) const;
  [[nodiscard]] double get_float(const std::string& key) const;
  [[nodiscard]] bool get_bool(const std::string& key) const;
  [[nodiscard]] const std::string& get_string(const std::string& key) const;
  [[nodiscard]] TokenAmount get_tokens(const std::string& key) const;

  /// Every key with its resolved value, for the "resolved configuration" written beside results.
  [[nodiscard]] const std::map<std::string, std::string>& values() const { return values_; }
  /// Canonical spec text: "name:k1=v1,k2=v2" in key order, defaults included.
  [[nodiscard]] std::string canonical(std::string_view policy) const;

 private:
  std::map<std::string, std::string> values_;
  std::map<std::string, ParamType> types_;
  std::string policy_;
  [[nodiscard]] const std::string& raw(const std::string& key, ParamType type) const;
};

/// Parses one value as `type`; returns false if it does not parse.
bool param_value_valid(ParamType type, const std::string& text);
std::string_view param_type_name(ParamType type);

}  // namespace kvlab
