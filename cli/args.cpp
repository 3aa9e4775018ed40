#include "cli/args.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <sstream>

#include "core/error.hpp"

namespace kvlab::cli {

std::string CommandSpec::help_text() const {
  std::ostringstream out;
  out << "usage: " << usage << "\n\n" << summary << "\n";
  if (!flags.empty()) {
    out << "\noptions:\n";
    for (const auto& f : flags) {
      std::string left = "  --" + f.name + (f.value_name.empty() ? "" : " " + f.value_name);
      out << left;
      const size_t column = 30;
      if (left.size() + 2 > column) {
        out << "\n" << std::string(column, ' ');
      } else {
        out << std::string(column - left.size(), ' ');
      }
      out << f.help;
      if (!f.default_value.empty()) out << " (default: " << f.default_value << ")";
      if (f.repeated) out << " (repeatable)";
      if (f.required) out << " (required)";
      out << "\n";
    }
  }
  out << "  --help                      show this help and exit\n";
  if (!epilog.empty()) out << "\n" << epilog << "\n";
  return out.str();
}

namespace {

bool is_flag(const std::string& a) { return a.size() > 2 && a[0] == '-' && a[1] == '-'; }

}  // namespace

Args Args::parse(const CommandSpec& spec, const std::vector<std::string>& argv) {
  Args args;
  args.spec_ = &spec;
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& a = argv[i];
    if (a == "--help" || a == "-h") {
      args.help_ = true;
      continue;
    }
    if (a == "--") {  // everything after is positional
      for (++i; i < argv.size(); ++i) args.positionals_.push_back(argv[i]);
      break;
    }
    if (!is_flag(a)) {
      if (a.size() > 1 && a[0] == '-') throw UsageError("unknown option '" + a + "' (see --help)");
      args.positionals_.push_back(a);
      continue;
    }
    std::string name = a.substr(2);
    std::optional<std::string> value;
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    const FlagSpec& f = args.spec_of(name);
    if (f.value_name.empty()) {
      if (value) throw UsageError("--" + name + " takes no value");
      value = "true";
    } else if (!value) {
      if (i + 1 >= argv.size()) throw UsageError("--" + name + " needs a value (" + f.value_name + ")");
      value = argv[++i];
    }
    auto& slot = args.values_[name];
    if (!slot.empty() && !f.repeated) throw UsageError("--" + name + " given more than once");
    slot.push_back(*value);
  }
  if (args.help_) return args;
  for (const auto& f : spec.flags) {
    if (f.required && !args.has(f.name)) throw UsageError("missing required flag --" + f.name);
  }
  if (args.positionals_.size() < spec.positionals.size()) {
    throw UsageError("missing argument " + spec.positionals[args.positionals_.size()] + " (usage: " +
                     spec.usage + ")");
  }
  if (args.positionals_.size() > spec.positionals.size()) {
    throw UsageError("unexpected argument '" + args.positionals_[spec.positionals.size()] +
                     "' (usage: " + spec.usage + ")");
  }
  return args;
}

const FlagSpec& Args::spec_of(const std::string& flag) const {
  for (const auto& f : spec_->flags) {
    if (f.name == flag) return f;
  }
  std::string valid;
  for (const auto& f : spec_->flags) valid += (valid.empty() ? "--" : ", --") + f.name;
  throw UsageError("unknown flag --" + flag + (valid.empty() ? "" : " (valid: " + valid + ")"));
}

bool Args::has(const std::string& flag) const {
  (void)spec_of(flag);
  return values_.count(flag) != 0;
}

std::optional<std::string> Args::get_optional(const std::string& flag) const {
  const FlagSpec& f = spec_of(flag);
  if (auto it = values_.find(flag); it != values_.end()) return it->second.back();
  if (!f.default_value.empty()) return f.default_value;
  return std::nullopt;
}

std::string Args::get(const std::string& flag) const {
  auto v = get_optional(flag);
  if (!v) throw UsageError("missing required flag --" + flag);
  return *v;
}

std::vector<std::string> Args::get_all(const std::string& flag) const {
  const FlagSpec& f = spec_of(flag);
  if (auto it = values_.find(flag); it != values_.end()) return it->second;
  if (!f.default_value.empty()) return {f.default_value};
  return {};
}

int64_t Args::get_int(const std::string& flag) const { return parse_int(get(flag), "--" + flag); }

int64_t Args::get_int_in(const std::string& flag, int64_t min, int64_t max) const {
  const int64_t v = get_int(flag);
  if (v < min || v > max) {
    throw UsageError("--" + flag + " must be between " + std::to_string(min) + " and " + std::to_string(max) +
                     ", got " + std::to_string(v));
  }
  return v;
}

int Args::get_int32(const std::string& flag) const {
  return static_cast<int>(get_int_in(flag, std::numeric_limits<int>::min(), std::numeric_limits<int>::max()));
}

int Args::get_threads() const { return static_cast<int>(get_int_in("threads", 0, kMaxThreads)); }
double Args::get_double(const std::string& flag) const { return parse_double(get(flag), "--" + flag); }

std::map<std::string, std::vector<std::string>> Args::resolved() const {
  std::map<std::string, std::vector<std::string>> out;
  for (const auto& f : spec_->flags) {
    auto v = get_all(f.name);
    if (f.value_name.empty() && v.empty()) v = {"false"};
    out[f.name] = v;
  }
  return out;
}

int64_t parse_int(const std::string& text, const std::string& what) {
  int64_t v = 0;
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, v);
  if (text.empty() || ec != std::errc() || ptr != end) {
    throw UsageError(what + ": '" + text + "' is not a whole number");
  }
  return v;
}

std::vector<int64_t> parse_int_list(const std::string& text, const std::string& what) {
  std::vector<int64_t> out;
  size_t begin = 0;
  while (begin <= text.size()) {  // "8,,15" and a trailing comma give an empty item: refused
    const size_t end = std::min(text.find(',', begin), text.size());
    out.push_back(parse_int(text.substr(begin, end - begin), what));
    begin = end + 1;
  }
  return out;
}

bool parse_on_off(const std::string& text, const std::string& what) {
  if (text == "on") return true;
  if (text == "off") return false;
  throw UsageError(what + " must be on or off, got '" + text + "'");
}

double parse_double(const std::string& text, const std::string& what) {
  double v = 0;
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, v);
  if (text.empty() || ec != std::errc() || ptr != end || !std::isfinite(v)) {
    throw UsageError(what + ": '" + text + "' is not a number");
  }
  return v;
}

}  // namespace kvlab::cli
