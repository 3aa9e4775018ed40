// Flags and set-up shared by the live commands (kvlab generate | run | record): the model and
// decoder flags, loading the model with one-line errors and the context-length check.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "backends/live/live_model.hpp"
#include "cli/args.hpp"
#include "core/registry.hpp"

namespace kvlab::cli {

/// --model, --chunk-tokens, --feature-layer, --chunk-features, --rope-scaling, --prefill-block,
/// --prefill-window, --threads.
std::vector<FlagSpec> live_model_flags();

/// Decoder options from those flags (UsageError naming the flag).
DecoderOptions live_decoder_options(const Args& args);

/// `options` asking the decoder for the policy inputs that `policies` read and no others: query
/// vectors and key summaries when one needs them, the prefill observation (--prefill-window)
/// when one needs it. The GPU decoder computes only what it is asked for.
DecoderOptions live_policy_inputs(DecoderOptions options, const std::vector<ResolvedPolicy>& policies);

/// --context-tokens, --samples and --seed of a task set, range-checked (UsageError naming the flag).
struct TaskSetFlags {
  int64_t context_tokens;
  int64_t samples;
  int64_t seed;
};
TaskSetFlags live_task_set(const Args& args);

/// --template-set of run and record (default|train|heldout), as a FlagSpec and parsed.
FlagSpec template_set_flag();
TemplateSet live_template_set(const Args& args);

/// --stop limit|eos of run and record: true when a request ends at its first stop token.
bool live_stop_at_eos(const Args& args);

/// Loads --model (default: scripts/fetch-model.sh's file).
LiveModel live_load_model(const Args& args);

/// InputError naming `flag` when `positions` exceed the model's usable context (the trained
/// context unless --rope-scaling stretches it).
void live_check_context(const LiveModel& model, const DecoderOptions& options, int64_t positions,
                        const std::string& flag);

/// One line on stderr: "note: ...".
void live_note(const std::string& text);

}  // namespace kvlab::cli
