// Errors that reach the user. Every message is one line that names the file, field or
// parameter at fault; the CLI maps the type to the exit code (usage 2, failure 1).
#pragma once

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

}  // namespace kvlab
