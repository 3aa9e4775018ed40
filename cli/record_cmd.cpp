// kvlab record: runs full attention on the real model over RULER-style task prompts and writes
// a v1 trace, so that real workloads replay like synthetic ones.
#include <iomanip>
#include <iostream>

#include "backends/live/live_record.hpp"
#include "cli/args.hpp"
#include "cli/commands.hpp"
#include "cli/live_common.hpp"
#include "cli/live_device.hpp"
#include "cli/progress.hpp"
#include "core/error.hpp"

namespace kvlab::cli {
namespace {

CommandSpec record_spec() {
  CommandSpec spec{
      "kvlab record --task NAME --context-tokens N --samples K --out FILE [options]",
      "Runs the model with full attention over K samples of a task and writes a trace (format\n"
      "v1): per decode step the attention mass per chunk of every layer (per KV head, or the mean\n"
      "over a layer's KV heads), the query features (the feature layer's input hidden state of the\n"
      "latest processed token) and, per request, the chunk features and the prefill observation\n"
      "(--prefill-window); with --qk-vectors on also each step's query vectors and every chunk's\n"
      "key bounds and representative key (quest, infllm). --stop limit (the default) runs every\n"
      "request --steps steps, past EOS; --stop eos ends it at its first stop token, where kvlab\n"
      "run ends it (record --steps N matches run --max-tokens N+1).",
      {{"task", "NAME", "task (niah_single, niah_multikey, niah_multivalue, niah_multiquery, vt, cwe, fwe)",
        "niah_single"},
       {"context-tokens", "N", "prompt length target in tokens (template included)", "4096"},
       {"samples", "K", "requests to record", "8"},
       {"seed", "S", "task seed", "0"},
       template_set_flag(),
       {"steps", "N", "decode steps per request", "64"},
       {"heads", "aggregated|per-head", "mass rows: mean over a layer's KV heads, or one row per KV head",
        "aggregated"},
       {"mass-dtype", "f16|f32", "stored width of the mass values", "f16"},
       {"storage", "auto|dense|sparse", "mass layout in the file", "auto"},
       {"stop", "limit|eos", "limit: every request runs --steps steps; eos: a request also ends at a stop token", "limit"},
       {"qk-vectors", "on|off", "write query vectors and per-chunk key min/max/representative (large)", "off"},
       {"batch", "N", "requests recorded at once; with --backend cuda their steps share one forward pass. The "
                      "trace does not depend on it", "1"},
       {"out", "FILE", "trace file to write (atomically)", "", false, true}},
      {},
      "example:\n"
      "  kvlab record --task niah_single --context-tokens 2048 --samples 8 --steps 32 --out real.h5"};
  auto model = live_model_flags();
  spec.flags.insert(spec.flags.begin(), model.begin(), model.end());
  return spec;
}

}  // namespace

int run_record(const Argv& argv) {
  const CommandSpec spec = record_spec();
  const Args args = Args::parse(spec, argv);
  if (args.help()) {
    std::cout << spec.help_text();
    return 0;
  }
  const DecoderOptions decoder = live_decoder_options(args);
  const auto [context, samples, seed] = live_task_set(args);
  const int64_t steps = args.get_int("steps");
  if (steps < 1 || steps > 1 << 20) throw UsageError("--steps must be between 1 and 1048576");
  RecordOptions record;
  const std::string heads = args.get("heads");
  if (heads != "aggregated" && heads != "per-head") throw UsageError("--heads must be aggregated or per-head");
  record.per_head = heads == "per-head";
  const std::string dtype = args.get("mass-dtype");
  if (dtype != "f16" && dtype != "f32") throw UsageError("--mass-dtype must be f16 or f32");
  record.mass_dtype = dtype == "f16" ? MassDtype::Float16 : MassDtype::Float32;
  const std::string storage = args.get("storage");
  if (storage == "auto") {
    record.storage = MassStorage::Auto;
  } else if (storage == "dense") {
    record.storage = MassStorage::Dense;
  } else if (storage == "sparse") {
    record.storage = MassStorage::Sparse;
  } else {
    throw UsageError("--storage must be auto, dense or sparse");
  }
  record.query_keys = parse_on_off(args.get("qk-vectors"), "--qk-vectors");
  const bool stop_at_eos = live_stop_at_eos(args);
  const TemplateSet templates = live_template_set(args);
  const int64_t batch = args.get_int("batch");
  if (batch < 1 || batch > 4096) throw UsageError("--batch must be between 1 and 4096");
  record.in_flight = static_cast<int>(batch);
  const std::string task = args.get("task");

  const LiveModel model = live_load_model(args);
  live_check_context(model, decoder, context + steps, "--context-tokens plus --steps");
  std::vector<LiveRequest> requests = task_requests(*model.tokenizer, task, context, static_cast<int>(samples),
                                                    static_cast<uint64_t>(seed), steps, nullptr, templates);
  LiveOptions options;
  options.stop_at_eos = stop_at_eos;
  options.reference_mass = false;  // every chunk is resident: the observed mass is full attention
  DecoderOptions inputs = decoder;
  inputs.query_keys = record.query_keys;  // the prefill observation is recorded with --prefill-window > 0
  const LiveDecoders decoders = live_decoders(args, model, inputs);
  LiveBackend backend(decoders.factory, model.stop_tokens, std::move(requests), options);

  record.group = decoders.group;
  ProgressBar bar("record");
  record.progress = [&bar](int64_t done, int64_t total) { bar.update(done, total); };
  const std::string out = args.get("out");
  const RecordSummary s = record_trace(backend, out, record);
  bar.finish();
  std::cout << std::fixed << "wrote " << out << ": " << s.requests << " request(s), " << s.steps
            << " steps, " << s.prompt_tokens << " prompt tokens";
  if (s.skipped > 0) std::cout << " (" << s.skipped << " request(s) stopped before a step: left out)";
  std::cout << "; prefill " << std::setprecision(1)
            << static_cast<double>(s.prompt_tokens) / std::max(s.prefill_seconds, 1e-9) << " tok/s, decode "
            << static_cast<double>(s.steps) / std::max(s.decode_seconds, 1e-9) << " tok/s per request; "
            << s.steps << " steps in " << s.wall_seconds << " s overall, " << decoders.backend << ", batch " << batch
            << " (" << static_cast<double>(s.steps) / std::max(s.wall_seconds, 1e-9) << " tok/s, prefill included)";
  const nlohmann::json device = decoders.device_stats();
  if (device.contains("passes")) {
    std::cout << "; " << device["passes"].get<int64_t>() << " passes of " << std::setprecision(1)
              << device["batch_mean"].get<double>() << " sequences, " << device["pass_wall_ms_mean"].get<double>()
              << " ms each: " << device["decode_tokens_per_s_in_passes"].get<double>() << " tok/s in passes";
  }
  std::cout << "\n";
  return 0;
}

}  // namespace kvlab::cli
