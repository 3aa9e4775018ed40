#include "cli/live_common.hpp"

#include <algorithm>
#include <iostream>

#include "backends/cpu/llama_decoder.hpp"
#include "backends/model/llama_weights.hpp"
#include "cli/live_device.hpp"
#include "core/error.hpp"

namespace kvlab::cli {

std::vector<FlagSpec> live_model_flags() {
  std::vector<FlagSpec> flags{{"model", "FILE", "GGUF model (Llama architecture); default: $KVLAB_MODEL or models/SmolLM2-135M-Instruct.Q4_1.gguf",
           ""},
          {"chunk-tokens", "N", "tokens per KV chunk (the unit of residency)", "64"},
          {"feature-layer", "L", "layer whose input hidden state is the query feature; -1 = n_layers/2", "-1"},
          {"feature-layers", "L,L,...", "several feature layers, their features side by side (the trace's feature_layers; a "
                                        "multi-layer lsa indexer); the first is the query feature layer (instead of "
                                        "--feature-layer)", ""},
          {"chunk-features", "keys|hidden", "chunk features: mean post-RoPE keys or mean hidden states of the feature layer",
           "keys"},
          {"rope-scaling", "SPEC", "none, linear:FACTOR or ntk:FACTOR; needed past the trained context", "none"},
          {"prefill-block", "N", "prompt tokens per prefill block", "256"},
          {"prefill-window", "W", "prefill observation of the last W prompt positions (snapkv family); 0 = none", "32"},
          {"threads", "N", "decoder threads; 0 = all cores", "0"}};
  const std::vector<FlagSpec> device = live_device_flags();
  flags.insert(flags.end(), device.begin(), device.end());
  return flags;
}

TaskSetFlags live_task_set(const Args& args) {
  const int64_t context = args.get_int("context-tokens");
  if (context < 1 || context > 1 << 22) throw UsageError("--context-tokens must be between 1 and 4194304");
  const int64_t samples = args.get_int("samples");
  if (samples < 1 || samples > 100000) throw UsageError("--samples must be between 1 and 100000");
  const int64_t seed = args.get_int("seed");
  if (seed < 0) throw UsageError("--seed must not be negative");
  return {context, samples, seed};
}

DecoderOptions live_decoder_options(const Args& args) {
  live_check_device(args);  // before the model loads: no GPU fails at once
  DecoderOptions o;
  const int64_t chunk = args.get_int("chunk-tokens");
  if (chunk < 1 || chunk > 65536) throw UsageError("--chunk-tokens must be between 1 and 65536");
  o.chunk_tokens = static_cast<int>(chunk);
  const int64_t layer = args.get_int("feature-layer");
  if (layer < -1 || layer > 4096) throw UsageError("--feature-layer must be -1 or a layer index");
  o.feature_layer = static_cast<int>(layer);
  if (const std::optional<std::string> list = args.get_optional("feature-layers")) {
    if (args.has("feature-layer")) throw UsageError("--feature-layer and --feature-layers: give one of them");
    const std::vector<int64_t> layers = parse_int_list(*list, "--feature-layers");
    for (const int64_t l : layers) {
      if (l < 0 || l > 4096) throw UsageError("--feature-layers: " + std::to_string(l) + " is not a layer index");
    }
    o.feature_layer = static_cast<int>(layers[0]);
    o.extra_feature_layers.assign(layers.begin() + 1, layers.end());  // the decoder checks range and repeats
  }
  const std::string source = args.get("chunk-features");
  if (source == "keys") {
    o.chunk_feature_source = ChunkFeatureSource::kKeys;
  } else if (source == "hidden") {
    o.chunk_feature_source = ChunkFeatureSource::kHidden;
  } else {
    throw UsageError("--chunk-features must be keys or hidden, got '" + source + "'");
  }
  o.rope_scaling = parse_rope_scaling(args.get("rope-scaling"), "--rope-scaling");
  const int64_t block = args.get_int("prefill-block");
  if (block < 1 || block > 65536) throw UsageError("--prefill-block must be between 1 and 65536");
  o.prefill_block = static_cast<int>(block);
  const int64_t window = args.get_int("prefill-window");
  if (window < 0 || window > 1 << 20) throw UsageError("--prefill-window must be between 0 and 1048576");
  o.prefill_window = static_cast<int>(window);
  const int64_t threads = args.get_int("threads");
  if (threads < 0 || threads > 4096) throw UsageError("--threads must be between 0 and 4096");
  o.threads = static_cast<int>(threads);
  return o;
}

FlagSpec template_set_flag() {
  return {"template-set", "default|train|heldout",
          "task wording: default (the fixed RULER-style templates); train or heldout: per sample, haystack, needle, "
          "key/value and question templates drawn from one of two families that share no template",
          "default"};
}

TemplateSet live_template_set(const Args& args) { return parse_template_set(args.get("template-set"), "--template-set"); }

DecoderOptions live_policy_inputs(DecoderOptions options, const std::vector<ResolvedPolicy>& policies) {
  auto any_needs = [&](PolicyNeed need) {
    return std::any_of(policies.begin(), policies.end(), [&](const ResolvedPolicy& p) { return p.needs(need); });
  };
  options.query_keys = any_needs(PolicyNeed::QueryKeyVectors);
  if (!any_needs(PolicyNeed::PrefillObservation)) options.prefill_window = 0;
  return options;
}

bool live_stop_at_eos(const Args& args) {
  const std::string stop = args.get("stop");
  if (stop != "limit" && stop != "eos") throw UsageError("--stop must be limit or eos, got '" + stop + "'");
  return stop == "eos";
}

LiveModel live_load_model(const Args& args) {
  const std::string path = args.has("model") ? args.get("model") : default_model_path().string();
  return load_live_model(path);
}

void live_check_context(const LiveModel& model, const DecoderOptions& options, int64_t positions,
                        const std::string& flag) {
  const LlamaDecoder probe(model.weights, options);
  const int64_t limit = probe.max_context();
  if (positions <= limit) return;
  const bool scaled = options.rope_scaling.kind != RopeScaling::Kind::kNone;
  throw InputError(flag + ": " + std::to_string(positions) + " positions exceed the " +
                   (scaled ? "rope-scaled context of " : "model's trained context of ") + std::to_string(limit) +
                   " tokens" + (scaled ? "; use a larger factor" : "; pass --rope-scaling linear:F or ntk:F to extend it"));
}

void live_note(const std::string& text) { std::cerr << "note: " << text << "\n"; }

}  // namespace kvlab::cli
