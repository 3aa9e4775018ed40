// `kvlab replay --execute cuda`: the flags that turn a replay into trace-driven execution on
// the GPU (backends/cuda/exec), and what the run reports beside the ledger's figures. This
// file builds with or without CUDA; without it, asking for --execute cuda is a one-line error.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/args.hpp"
#include "core/backend.hpp"
#include "core/engine.hpp"
#include "core/metrics.hpp"

namespace kvlab::cli {

/// The replay flags of trace-driven execution (appended to replay's CommandSpec).
std::vector<FlagSpec> execute_flags();

/// A GPU execution in progress: wraps the trace's backend and collects per-step records.
class Execution {
 public:
  virtual ~Execution() = default;
  /// The backend the engine drives (closed loop over the trace, executing on the GPU).
  [[nodiscard]] virtual Backend& backend() = 0;
  /// Installs the engine hooks that join the ledger's per-step figures with the GPU's.
  virtual void attach(EngineOptions& options) = 0;
  /// Per policy (in the order of `results`): measured figures next to the modelled ones.
  [[nodiscard]] virtual nlohmann::json summary(const std::vector<PolicyResult>& results,
                                               const EngineOptions& options) const = 0;
  /// The per-step CSV `kvlab calibrate` reads.
  [[nodiscard]] virtual std::string steps_csv(const std::vector<PolicyResult>& results) const = 0;
  /// The resolved execution settings, for config.json.
  [[nodiscard]] virtual nlohmann::json config() const = 0;
};

/// Null unless --execute cuda was given. Checks every execution flag and the device before
/// anything runs (UsageError for a bad flag; InputError for no usable GPU, a geometry the
/// kernels do not support, or a pool or mirror that does not fit).
std::unique_ptr<Execution> start_execution(const Args& args, std::unique_ptr<Backend>& source,
                                           int64_t policies);

}  // namespace kvlab::cli
