// A small command-line parser for kvlab's subcommands: "--flag value", "--flag=value",
// repeated flags, boolean switches and positional arguments. Anything it does not know is a
// UsageError naming the flag, so a typo never silently falls back to a default.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace kvlab::cli {

/// The most threads any --threads flag accepts.
inline constexpr int kMaxThreads = 4096;

/// One flag a subcommand accepts.
struct FlagSpec {
  std::string name;           // without the leading "--"
  std::string value_name;     // e.g. "FILE"; empty for a switch (takes no value)
  std::string help;
  std::string default_value;  // shown in --help and returned when absent; empty = none
  bool repeated = false;      // may be given several times
  bool required = false;
};

/// A subcommand's interface: its flags and positional arguments, plus text for --help.
struct CommandSpec {
  std::string usage;    // e.g. "kvlab trace info FILE"
  std::string summary;  // one paragraph
  std::vector<FlagSpec> flags;
  std::vector<std::string> positionals;  // names of required positional arguments, in order
  std::string epilog;                    // extra help text (examples)

  [[nodiscard]] std::string help_text() const;
};

/// The parsed command line of one subcommand.
class Args {
 public:
  /// Parses `argv` against `spec`. Throws UsageError on unknown flags, missing values,
  /// repeated non-repeatable flags, missing required flags and wrong positional counts.
  /// `--help`/`-h` anywhere sets help() and skips the required-argument checks.
  static Args parse(const CommandSpec& spec, const std::vector<std::string>& argv);

  [[nodiscard]] bool help() const { return help_; }
  [[nodiscard]] bool has(const std::string& flag) const;
  /// The last value given, else the default. Throws UsageError if neither exists.
  [[nodiscard]] std::string get(const std::string& flag) const;
  [[nodiscard]] std::optional<std::string> get_optional(const std::string& flag) const;
  /// Every value given for a repeated flag, in order.
  [[nodiscard]] std::vector<std::string> get_all(const std::string& flag) const;
  /// Typed getters; a value that does not parse is a UsageError naming the flag.
  [[nodiscard]] int64_t get_int(const std::string& flag) const;
  [[nodiscard]] double get_double(const std::string& flag) const;
  /// get_int, refusing values outside [min, max] with a UsageError that quotes the value.
  [[nodiscard]] int64_t get_int_in(const std::string& flag, int64_t min, int64_t max) const;
  /// get_int for a flag held in an int: a value that does not fit is refused, not truncated.
  [[nodiscard]] int get_int32(const std::string& flag) const;
  /// --threads: 0 (all cores) to kMaxThreads; negative or larger is a usage error (OpenMP
  /// runtimes crash on very large teams).
  [[nodiscard]] int get_threads() const;
  [[nodiscard]] const std::vector<std::string>& positionals() const { return positionals_; }
  /// Every flag with its effective value (defaults included), for config.json.
  [[nodiscard]] std::map<std::string, std::vector<std::string>> resolved() const;

 private:
  const FlagSpec& spec_of(const std::string& flag) const;

  const CommandSpec* spec_ = nullptr;
  std::map<std::string, std::vector<std::string>> values_;
  std::vector<std::string> positionals_;
  bool help_ = false;
};

/// Strict number parsing shared by the CLI: the whole text must be a number.
/// `what` names the flag or parameter in the UsageError.
int64_t parse_int(const std::string& text, const std::string& what);
/// Comma-separated whole numbers ("8,15,22"), at least one; every item as parse_int.
std::vector<int64_t> parse_int_list(const std::string& text, const std::string& what);
double parse_double(const std::string& text, const std::string& what);
/// "on" → true, "off" → false; anything else is a UsageError naming `what`.
bool parse_on_off(const std::string& text, const std::string& what);

}  // namespace kvlab::cli
