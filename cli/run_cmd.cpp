// kvlab run: closed-loop evaluation on the real model. For each policy: task accuracy next to
// the footprint and recall metrics, plus agreement with full attention.
//
// Agreement is measured teacher-forced: full attention runs first (free running) and its
// tokens and next-token distributions are kept; each other policy then runs a second pass that
// feeds full attention's tokens while attending over the policy's resident set, and every
// step's next-token distribution is compared with full's: the mean KL(full ‖ policy) over
// steps, and the fraction of steps whose argmax equals full's. Teacher forcing keeps the two
// runs on the same positions, so a single early divergence does not make every later step
// incomparable. Accuracy comes from the free-running pass (the policy's own tokens).
//
// Per request, the prompt is prefilled once; the free-running pass runs every policy (and full
// attention, for agreement) in lockstep from that prefill, and the teacher-forced pass runs the
// other policies from the same prefill (core/engine.hpp, run_request). The metrics are summed
// per step and merged across requests by core/metrics, as for a replay.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <exception>
#include <functional>
#include <mutex>
#include <cmath>
#include <iomanip>
#include <iostream>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "backends/live/live_backend.hpp"
#include "cli/args.hpp"
#include "cli/commands.hpp"
#include "cli/live_common.hpp"
#include "cli/live_device.hpp"
#include "cli/output.hpp"
#include "cli/version.hpp"
#include "core/engine.hpp"
#include "core/error.hpp"

namespace kvlab::cli {
namespace {

CommandSpec run_spec() {
  CommandSpec spec{
      "kvlab run --task NAME --context-tokens N --samples K --policy SPEC [--policy SPEC ...] [options]",
      "Closed-loop evaluation on the real model: every policy decides, step by step, which KV\n"
      "chunks attention reads. Reports per policy the task accuracy (free-running generation,\n"
      "scored like RULER), footprint and recall (against full attention of the same step), and\n"
      "agreement with full attention measured teacher-forced: the mean KL(full || policy) of the\n"
      "next-token distribution and the fraction of steps whose greedy token equals full's.\n"
      "Oracle policies cannot run live: they are refused before the model loads. --stop eos (the\n"
      "default) ends a request at its first stop token; --stop limit runs all --max-tokens, as\n"
      "kvlab record does (run --max-tokens N+1 covers the steps of record --steps N), and scores\n"
      "the answer up to the first stop token.",
      {{"task", "NAME", "task (niah_single, niah_multikey, niah_multivalue, niah_multiquery, vt, cwe, fwe)",
        "niah_single"},
       {"context-tokens", "N", "prompt length target in tokens (template included)", "4096"},
       {"samples", "K", "task samples (requests)", "20"},
       {"seed", "S", "task seed", "0"},
       template_set_flag(),
       {"policy", "SPEC", "policy spec name[:key=value,...] (see kvlab policies)", "", true, true},
       {"plugin", "LIB", "load a shared library that registers policies", "", true},
       {"max-tokens", "N", "tokens generated at most per request (stops at EOS)", "16"},
       {"stop", "eos|limit", "eos: a request ends at its first stop token; limit: it runs all --max-tokens", "eos"},
       {"arrival", "modelled|measured", "fetch arrival: the ledger's timing model, or what the backend reports", "modelled"},
       {"agreement", "on|off", "measure agreement with full attention (a teacher-forced pass per policy)", "on"},
       {"batch", "N", "requests in flight at once; with --backend cuda their steps (every policy's) share one "
                      "forward pass. Results do not depend on it", "1"},
       {"critical-mass", "P", "mass threshold p of the critical set, 0 < p <= 1", "0.9"},
       {"resolved-recall", "R",
        "a request is resolved when its critical recall is >= R at 99% of its steps, 0 < R <= 1", "0.95"},
       {"json", "", "print a JSON array (one object per policy) instead of the table", ""},
       {"out-dir", "DIR", "also write results.json, generations.json and config.json into DIR", ""}},
      {},
      "example:\n"
      "  kvlab run --task niah_single --context-tokens 4096 --samples 20 --policy full \\\n"
      "            --policy sliding_window:window=512,sinks=64 --json"};
  auto model = live_model_flags();
  spec.flags.insert(spec.flags.begin(), model.begin(), model.end());
  return spec;
}

/// Per policy, over all requests: what the metrics do not hold.
struct Totals {
  MetricSums sums;
  MetricSums forced_sums;  // the teacher-forced pass: full attention's tokens, the policy's residency
  double accuracy_sum = 0;
  double kl_sum = 0;
  int64_t agree = 0;
  int64_t compared = 0;
  LiveSpeed speed;         // the free-running pass's sessions
  int summary_ratio = 0;  // the largest summary tier the policy's plans gave attention
};

/// Adds the teacher-forced comparison of `forced` with full attention's `reference` pass.
void add_agreement(const LiveOutput& reference, const LiveOutput& forced, Totals& tot) {
  for (size_t t = 0; t < forced.log_probs.size() && t < reference.log_probs.size(); ++t) {
    const std::vector<float>& lf = reference.log_probs[t];
    const std::vector<float>& lp = forced.log_probs[t];
    double kl = 0;
    for (size_t v = 0; v < lf.size(); ++v) kl += std::exp(static_cast<double>(lf[v])) * (lf[v] - lp[v]);
    tot.kl_sum += std::max(kl, 0.0);
    const auto top_f = std::max_element(lf.begin(), lf.end()) - lf.begin();
    const auto top_p = std::max_element(lp.begin(), lp.end()) - lp.begin();
    tot.agree += top_f == top_p ? 1 : 0;
    tot.compared += 1;
  }
}

/// Runs `policies` over request i from `prefill`; returns their sums and outputs.
struct Pass {
  std::vector<MetricSums> sums;
  std::vector<LiveOutput> outputs;
};
Pass run_pass(LiveBackend& backend, int64_t i, const std::vector<ResolvedPolicy>& policies, EngineOptions engine,
              const std::shared_ptr<const PrefilledRequest>& prefill) {
  Pass pass;
  pass.outputs.resize(policies.size());
  engine.on_request_end = [&pass](int64_t, int policy, const RequestSession& session) {
    pass.outputs[static_cast<size_t>(policy)] = LiveBackend::output_of(session);
  };
  pass.sums = run_request(backend, i, policies, engine, prefill);
  return pass;
}

/// One request's passes, kept until every request is done and merged in request order (so the
/// sums do not depend on --batch).
struct RequestRun {
  Pass free;
  Pass forced;
  double prefill_seconds = 0;
  double prefill_device_seconds = -1;
};

/// Runs `run(i)` for every request index on `threads` threads (each a member of `group` while
/// it works, so a batching decoder waits for it); the first exception is rethrown.
void for_each_request(int64_t n, int threads, StepGroup* group, const std::function<void(int64_t)>& run) {
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto worker = [&] {
    const StepGroupMember member(group);
    for (int64_t i = next.fetch_add(1); i < n && !failed.load(); i = next.fetch_add(1)) {
      try {
        run(i);
      } catch (...) {
        const std::lock_guard lock(error_mutex);
        if (!error) error = std::current_exception();
        failed = true;
      }
    }
  };
  const auto count = static_cast<int>(std::clamp<int64_t>(threads, 1, std::max<int64_t>(n, 1)));
  if (count == 1) {
    worker();
  } else {
    std::vector<std::thread> pool;
    for (int k = 0; k < count; ++k) pool.emplace_back(worker);
    for (auto& t : pool) t.join();
  }
  if (error) std::rethrow_exception(error);
}

/// The answer: the tokens before the first stop token (with --stop limit, generation goes on).
std::string generated_text(const LiveModel& model, std::vector<int32_t> tokens) {
  const auto stop = std::find_first_of(tokens.begin(), tokens.end(), model.stop_tokens.begin(), model.stop_tokens.end());
  tokens.erase(stop, tokens.end());
  return model.tokenizer->decode(tokens, /*skip_special=*/true);
}

}  // namespace

int run_run(const Argv& argv) {
  const CommandSpec spec = run_spec();
  const Args args = Args::parse(spec, argv);
  if (args.help()) {
    std::cout << spec.help_text();
    return 0;
  }
  const DecoderOptions decoder = live_decoder_options(args);
  const auto [context, samples, seed] = live_task_set(args);
  const int64_t max_tokens = args.get_int("max-tokens");
  if (max_tokens < 1 || max_tokens > 4096) throw UsageError("--max-tokens must be between 1 and 4096");
  const bool agreement = parse_on_off(args.get("agreement"), "--agreement");
  const bool stop_at_eos = live_stop_at_eos(args);
  const TemplateSet templates = live_template_set(args);
  const int64_t batch = args.get_int("batch");
  if (batch < 1 || batch > 4096) throw UsageError("--batch must be between 1 and 4096");
  EngineOptions engine;
  engine.threads = 1;  // the decoder uses every core itself
  engine.critical_mass = args.get_double("critical-mass");
  if (!(engine.critical_mass > 0 && engine.critical_mass <= 1)) throw UsageError("--critical-mass must be in (0, 1]");
  engine.resolved.recall = args.get_double("resolved-recall");
  engine.resolved.validate("--resolved-recall");

  const std::string arrival = args.get("arrival");
  if (arrival != "modelled" && arrival != "measured") {
    throw UsageError("--arrival must be modelled or measured, got '" + arrival + "'");
  }

  load_plugins(args.get_all("plugin"));
  std::vector<ResolvedPolicy> policies;
  for (const auto& text : args.get_all("policy")) {
    ResolvedPolicy p = PolicyRegistry::instance().resolve(text);
    if (p.descriptor->oracle) {
      throw UsageError("--policy " + p.label +
                       ": oracles read attention before it is computed, which a live run cannot give; record a "
                       "trace and replay it");
    }
    policies.push_back(std::move(p));
  }
  const ResolvedPolicy full = PolicyRegistry::instance().resolve("full");
  // The free-running pass: every policy, plus full attention for agreement when not listed.
  // The teacher-forced pass: every policy but full attention.
  std::vector<ResolvedPolicy> free_pass = policies;
  int full_index = -1;
  for (size_t k = 0; k < policies.size(); ++k) {
    if (policies[k].label == full.label) full_index = static_cast<int>(k);
  }
  if (agreement && full_index < 0) {
    full_index = static_cast<int>(free_pass.size());
    free_pass.push_back(full);
  }
  std::vector<ResolvedPolicy> forced_pass;
  std::vector<size_t> forced_of;  // forced_pass[j] is policies[forced_of[j]]
  for (size_t k = 0; k < policies.size(); ++k) {
    if (static_cast<int>(k) == full_index) continue;
    forced_pass.push_back(policies[k]);
    forced_of.push_back(k);
  }

  const LiveModel model = live_load_model(args);
  live_check_context(model, decoder, context + max_tokens - 1, "--context-tokens plus --max-tokens");
  std::vector<TaskSample> task_samples;
  std::vector<LiveRequest> requests = task_requests(*model.tokenizer, args.get("task"), context,
                                                    static_cast<int>(samples), static_cast<uint64_t>(seed),
                                                    max_tokens - 1, &task_samples, templates);
  LiveOptions options;
  options.keep_log_probs = agreement;
  options.stop_at_eos = stop_at_eos;
  options.arrival = arrival == "measured" ? ArrivalMode::Measured : ArrivalMode::Modelled;
  const LiveDecoders decoders = live_decoders(args, model, live_policy_inputs(decoder, free_pass));
  LiveBackend backend(decoders.factory, model.stop_tokens, std::move(requests), options);
  check_policies_fit(backend, policies);  // a budget that cannot fit fails now, not after a prefill

  const auto start = std::chrono::steady_clock::now();
  std::vector<RequestRun> runs(static_cast<size_t>(backend.requests()));
  std::mutex log_mutex;
  int64_t finished = 0;
  for_each_request(backend.requests(), static_cast<int>(batch), decoders.group, [&](int64_t i) {
    RequestRun& r = runs[static_cast<size_t>(i)];
    const auto t0 = std::chrono::steady_clock::now();
    const std::shared_ptr<const PrefilledRequest> prefill = backend.prefill(i);
    r.prefill_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    backend.clear_forced(i);
    r.free = run_pass(backend, i, free_pass, engine, prefill);
    r.prefill_device_seconds = r.free.outputs.empty() ? -1.0 : r.free.outputs[0].prefill_device_seconds;
    if (agreement && !forced_pass.empty()) {
      const LiveOutput& reference = r.free.outputs[static_cast<size_t>(full_index)];
      backend.set_forced_tokens(i, reference.tokens, reference.steps);
      r.forced = run_pass(backend, i, forced_pass, engine, prefill);
      backend.clear_forced(i);
    }
    const std::lock_guard lock(log_mutex);
    std::cerr << "run: request " << ++finished << "/" << backend.requests() << " done ("
              << fixed(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 1) << " s)\n";
  });

  std::vector<Totals> totals(policies.size());
  nlohmann::json generations = nlohmann::json::array();
  double prefill_seconds = 0;
  double prefill_device_seconds = 0;
  bool prefill_timed = true;
  int64_t prefill_tokens = 0;
  LiveSpeed all_sessions;  // both passes: the device's whole decode work
  for (int64_t i = 0; i < backend.requests(); ++i) {
    const RequestRun& r = runs[static_cast<size_t>(i)];
    const TaskSample& sample = task_samples[static_cast<size_t>(i)];
    nlohmann::json gen = {{"id", backend.request(i).info.id},
                          {"prompt_tokens", backend.request(i).info.prompt_tokens},
                          {"expected", sample.expected},
                          {"needle_depth", sample.needle_depth}};
    if (templates != TemplateSet::Default) {
      gen["template_set"] = sample.template_set;
      gen["template_variants"] = sample.template_variants;
    }
    prefill_seconds += r.prefill_seconds;
    prefill_timed = prefill_timed && r.prefill_device_seconds >= 0;
    prefill_device_seconds += std::max(r.prefill_device_seconds, 0.0);
    prefill_tokens += backend.request(i).info.prompt_tokens;
    const Pass& free = r.free;
    for (const LiveOutput& out : free.outputs) all_sessions.add(out);
    for (const LiveOutput& out : r.forced.outputs) all_sessions.add(out);
    for (size_t k = 0; k < policies.size(); ++k) {
      Totals& tot = totals[k];
      const LiveOutput& out = free.outputs[k];
      tot.sums.merge(free.sums[k]);
      const std::string text = generated_text(model, out.tokens);
      const double score = score_answer(sample, text);
      tot.accuracy_sum += score;
      tot.speed.add(out);
      tot.summary_ratio = std::max(tot.summary_ratio, out.summary_ratio);
      gen["outputs"][policies[k].label] = {{"text", text}, {"score", score}};
    }
    if (agreement) {
      const LiveOutput& reference = free.outputs[static_cast<size_t>(full_index)];
      if (full_index < static_cast<int>(policies.size())) {
        // Full attention teacher-forced on its own tokens is its free-running pass.
        totals[static_cast<size_t>(full_index)].forced_sums.merge(free.sums[static_cast<size_t>(full_index)]);
        totals[static_cast<size_t>(full_index)].agree += reference.steps;
        totals[static_cast<size_t>(full_index)].compared += reference.steps;
      }
      for (size_t j = 0; j < r.forced.outputs.size(); ++j) {
        add_agreement(reference, r.forced.outputs[j], totals[forced_of[j]]);
        totals[forced_of[j]].forced_sums.merge(r.forced.sums[j]);
      }
    }
    generations.push_back(gen);
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  // Prefill speed: the device's own time when it times the prefill, else wall time.
  const double prefill_time = prefill_timed ? prefill_device_seconds : prefill_seconds;
  const double prefill_tps = prefill_time > 0 ? static_cast<double>(prefill_tokens) / prefill_time : 0.0;
  // Prefills hold the device one at a time, and the others' steps wait for them: the decode
  // rate counts the run's wall time less the device's prefill time (wall time when untimed).
  const double decode_time = seconds - (prefill_timed ? prefill_device_seconds : 0.0);
  const double decode_tps_all = decode_time > 0 ? static_cast<double>(all_sessions.steps) / decode_time : 0.0;
  std::vector<MetricSums> sums, forced_sums;
  for (const Totals& tot : totals) {
    sums.push_back(tot.sums);
    forced_sums.push_back(tot.forced_sums);
  }
  const std::vector<PolicyResult> merged = results_from_sums(sums, policies);
  const std::vector<PolicyResult> forced_merged = results_from_sums(forced_sums, policies);
  nlohmann::json out = nlohmann::json::array();
  for (size_t k = 0; k < policies.size(); ++k) {
    const Totals& tot = totals[k];
    nlohmann::json obj = results_json({merged[k]})[0];
    const double n = static_cast<double>(backend.requests());
    obj["accuracy"] = tot.accuracy_sum / n;
    obj["summary_ratio"] = tot.summary_ratio;
    if (agreement && tot.compared > 0) {
      obj["kl_mean"] = tot.kl_sum / static_cast<double>(tot.compared);
      obj["top1_agreement"] = static_cast<double>(tot.agree) / static_cast<double>(tot.compared);
    } else {
      obj["kl_mean"] = nullptr;
      obj["top1_agreement"] = nullptr;
    }
    obj["agreement_steps"] = tot.compared;
    // The same metrics over the teacher-forced pass: the steps and tokens of full attention's
    // generation (a recording's, with --stop alike), so only the policy's effect on the model's
    // state separates them from a replay.
    if (agreement) {
      const PolicyResult& f = forced_merged[k];
      obj["teacher_forced"] = {{"steps", f.steps},
                               {"footprint_mean_ratio", f.footprint_mean_ratio},
                               {"critical_recall", f.critical_recall},
                               {"mass_recall", f.mass_recall}};
    } else {
      obj["teacher_forced"] = nullptr;
    }
    obj["prefill_tokens_per_s"] = prefill_tps;
    tot.speed.write(obj);
    out.push_back(obj);
  }

  if (args.has("out-dir")) {
    nlohmann::json config = {{"command", "run"},
                             {"kvlab_version", kVersion},
                             {"git_revision", kGitRevision},
                             {"model", model.path},
                             {"backend", backend.describe()},
                             {"arrival", arrival_mode_name(backend.arrival_mode())},
                             {"flags", args.resolved()},
                             {"batch", batch},
                             {"prefill_tokens_per_s", prefill_tps},
                             {"prefill_timing", prefill_timed ? "device" : "wall"},
                             {"decode_steps_all_sessions", all_sessions.steps},
                             {"decode_tokens_per_s_overall", decode_tps_all},
                             {"device", decoders.device_stats()},
                             {"speed_fields", live_speed_fields()},
                             {"seconds", seconds}};
    const std::string dir = args.get("out-dir");
    write_file_atomic(dir + "/results.json", out.dump(2) + "\n");
    write_file_atomic(dir + "/generations.json", generations.dump(2) + "\n");
    write_file_atomic(dir + "/config.json", config.dump(2) + "\n");
  }
  if (args.has("json")) {
    std::cout << out.dump(2) << "\n";
    return 0;
  }
  const std::vector<std::string> head = {"policy",   "accuracy",    "footprint",  "crit.recall",
                                         "mass recall", "resolved", "KL(full||p)", "top-1 agree"};
  std::vector<std::vector<std::string>> rows;
  for (size_t k = 0; k < policies.size(); ++k) {
    const nlohmann::json& o = out[k];
    rows.push_back({policies[k].label + (totals[k].summary_ratio > 0 ? " +summaries" : ""), fixed(o["accuracy"], 3),
                    fixed(merged[k].footprint_mean_ratio, 3), fixed(merged[k].critical_recall, 4),
                    fixed(merged[k].mass_recall, 4), fixed(merged[k].resolved_fraction, 3), o["kl_mean"].is_null() ? "n/a" : fixed(o["kl_mean"], 4),
                    o["top1_agreement"].is_null() ? "n/a" : fixed(o["top1_agreement"], 3)});
  }
  std::vector<size_t> width(head.size());
  for (size_t c = 0; c < head.size(); ++c) {
    width[c] = head[c].size();
    for (const auto& row : rows) width[c] = std::max(width[c], row[c].size());
  }
  auto line = [&](const std::vector<std::string>& cells) {
    for (size_t c = 0; c < cells.size(); ++c) {
      std::cout << (c == 0 ? "" : "  ") << (c == 0 ? std::left : std::right)
                << std::setw(static_cast<int>(width[c])) << cells[c];
    }
    std::cout << std::left << "\n";
  };
  line(head);
  for (const auto& row : rows) line(row);
  std::cout << "\n" << backend.requests() << " request(s) of " << args.get("task") << " at " << context
            << " tokens in " << fixed(seconds, 1) << " s on " << decoders.backend << " (batch " << batch
            << "); prefill " << fixed(prefill_tps, 1) << " tok/s; decode " << fixed(decode_tps_all, 1)
            << " tok/s over all sessions\n";
  return 0;
}

}  // namespace kvlab::cli
