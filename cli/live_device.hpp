// Which device decodes a live command (kvlab generate | run | record --backend cpu|cuda): the
// decoder factory, and what the device reports about its speed. This file builds with or
// without CUDA; without it, --backend cuda is a one-line error.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "backends/live/decoder.hpp"
#include "backends/live/live_model.hpp"
#include "cli/args.hpp"

namespace kvlab::cli {

/// --backend and the flags of the GPU decoder (appended by live_model_flags).
std::vector<FlagSpec> live_device_flags();

/// Checks --backend and, for cuda, that this build has CUDA and an sm_90 GPU is present
/// (InputError in one line saying what was found and to use --backend cpu). Cheap: call it
/// before loading the model.
void live_check_device(const Args& args);

/// The cuda half of live_check_device: this build has CUDA and an sm_90 GPU is present.
void check_cuda_usable();

/// The decoders of a live run.
struct LiveDecoders {
  std::string backend;  // "cpu" or "cuda"
  DecoderFactory factory;
  /// Threads that submit batched steps join this (null for decoders that do not batch).
  StepGroup* group = nullptr;
  /// Totals the device measured so far (JSON object; empty for the CPU).
  std::function<nlohmann::json()> device_stats;
  std::shared_ptr<void> keep_alive;  // whatever the factory's decoders share
};

/// Decoders for --backend over `model` with `options`.
LiveDecoders live_decoders(const Args& args, const LiveModel& model, const DecoderOptions& options);

/// The throughput fields every live result carries, from one or more sessions' outputs:
/// decode tokens/s over the sessions' wall time and, when the decoder timed its steps, the
/// mean device milliseconds per step (each step's share of its forward pass) in attention,
/// the rest of the model and stalls, and the mean batch. Null where nothing was timed.
struct LiveSpeed {
  int64_t steps = 0;
  double decode_seconds = 0;
  int64_t timed_steps = 0;
  double attention_seconds = 0;
  double pass_seconds = 0;
  double stall_seconds = 0;
  int64_t batch_sum = 0;
  void add(const LiveOutput& out);
  /// Adds decode_tokens_per_s, step_attention_ms, step_model_ms, step_stall_ms and
  /// step_batch_mean to `obj`.
  void write(nlohmann::json& obj) const;
};

/// What the step-time fields mean (config.json of live runs).
nlohmann::json live_speed_fields();

}  // namespace kvlab::cli
