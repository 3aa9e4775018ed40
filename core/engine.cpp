#include "core/engine.hpp"

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>

#include "core/error.hpp"
#include "core/random.hpp"

namespace kvlab {
namespace {

/// Oracle access to the true attention of the current and later steps.
class SessionOracle final : public OracleView {
 public:
  SessionOracle(const RequestSession& session, int64_t last_step) : session_(session), last_(last_step) {}
  void at(int64_t step) { step_ = step; }
  [[nodiscard]] const StepMass& mass_at(int64_t step) const override {
    const StepMass* m = step == step_ ? session_.reference() : session_.lookahead(step);
    if (m == nullptr) {
      throw PolicyContractError("oracle read step " + std::to_string(step) + " at step " + std::to_string(step_) +
                                ", beyond its declared lookahead or the request");
    }
    return *m;
  }
  [[nodiscard]] int64_t last_step() const override { return last_; }

 private:
  const RequestSession& session_;
  int64_t step_ = 0;
  int64_t last_;
};

/// Open loop: what the policy saw is the true attention restricted to its resident chunks and
/// renormalised over them (a softmax over a subset is the full softmax renormalised).
class RestrictedAttention final : public ObservedAttention {
 public:
  RestrictedAttention(const StepMass& mass, const Residency& resident, const std::vector<double>& row_mass)
      : mass_(mass), resident_(resident), row_mass_(row_mass) {}
  [[nodiscard]] int rows() const override { return mass_.rows(); }
  void for_each(int r, const std::function<void(int64_t, float)>& fn) const override {
    const double total = row_mass_[r];
    if (total <= 0) return;
    const MassRow row = mass_.row(r);
    const ChunkMask& mask = resident_.row(r);
    for (size_t i = 0; i < row.value.size(); ++i) {
      const int64_t c = row.chunk_of(i);
      if (row.value[i] > 0 && c < mask.size() && mask.test(c)) fn(c, static_cast<float>(row.value[i] / total));
    }
  }

 private:
  const StepMass& mass_;
  const Residency& resident_;
  const std::vector<double>& row_mass_;
};

/// Closed loop: the backend reports the attention it computed over the resident chunks.
class ComputedAttention final : public ObservedAttention {
 public:
  explicit ComputedAttention(const StepMass& mass) : mass_(mass) {}
  [[nodiscard]] int rows() const override { return mass_.rows(); }
  void for_each(int r, const std::function<void(int64_t, float)>& fn) const override {
    const MassRow row = mass_.row(r);
    for (size_t i = 0; i < row.value.size(); ++i) {
      if (row.value[i] > 0) fn(row.chunk_of(i), row.value[i]);
    }
  }

 private:
  const StepMass& mass_;
};

/// The Bool parameter whose value true alone brings in `need` (PolicyTraits::needs_when), or ""
/// when the class needs it regardless: the setting a source without that input can run instead.
std::string switch_for(const ResolvedPolicy& policy, PolicyNeed need) {
  if (policy.descriptor->needs(need)) return "";
  for (const ConditionalNeed& c : policy.descriptor->traits.needs_when) {
    if (c.need == need && policy.params.get_bool(c.param)) return c.param;
  }
  return "";
}

/// Stops the run when the source lacks data the policy declared it needs (never a fallback).
void check_needs(const ResolvedPolicy& policy, const RequestContext& request, const std::string& source) {
  for (const PolicyNeed need : policy.needs()) {
    const bool missing = (need == PolicyNeed::QueryKeyVectors && request.qk_dim == 0) ||
                         (need == PolicyNeed::PrefillObservation && request.prefill == nullptr);
    if (!missing) continue;
    const std::string param = switch_for(policy, need);
    const std::string instead =
        param.empty() ? "" : "; or run " + policy.descriptor->name + ":" + param + "=false, which does without it";
    throw InputError("policy " + policy.descriptor->name + " needs " + std::string(policy_need_name(need)) +
                     " but request " + request.request_id + " of " + source + " has none: " +
                     std::string(policy_need_source(need)) + instead);
  }
}

/// One policy's run over one request.
struct PolicyRun {
  const ResolvedPolicy* resolved = nullptr;
  int index = 0;
  std::unique_ptr<Policy> policy;
  RequestContext request;
  std::unique_ptr<Ledger> ledger;
  Plan plan;
  MetricSums sums;
  std::vector<double> row_mass;  // per row, this step: mass over resident chunks
  std::unique_ptr<RequestSession> own_session;  // closed loop: the policy changes the model
  RequestSession* session = nullptr;
  bool ended = false;
};

/// Runs the policies of one request in lockstep, step by step. Open loop: they share one
/// session (the recorded attention does not depend on them). Closed loop: each has its own
/// session, all started from one prefill of the request.
class RequestRunner {
 public:
  RequestRunner(Backend& backend, int64_t request_index, const EngineOptions& options)
      : backend_(backend), index_(request_index), options_(options) {}

  std::vector<MetricSums> run(const std::vector<ResolvedPolicy>& all, std::shared_ptr<const PrefilledRequest> prefill,
                              std::atomic<int64_t>& progress_steps, int64_t progress_total) {
    const bool closed = backend_.closed_loop();
    std::unique_ptr<RequestSession> shared;
    if (closed) {
      if (!prefill) prefill = backend_.prefill(index_);
    } else {
      shared = backend_.open(index_);
    }
    const RequestInfo info = closed ? backend_.request_info(index_) : shared->info();
    const Geometry& geometry = backend_.geometry();
    const RowLayout rows = backend_.rows();
    const ArrivalMode arrival = backend_.arrival_mode();

    std::vector<PolicyRun> runs(all.size());
    int64_t lookahead = 0;
    for (size_t k = 0; k < all.size(); ++k) {
      PolicyRun& run = runs[k];
      run.resolved = &all[k];
      run.index = static_cast<int>(k);
      if (closed) {
        run.own_session = backend_.open(index_, prefill);
        run.session = run.own_session.get();
      } else {
        run.session = shared.get();
      }
      run.policy = run.resolved->instantiate();
      run.request = RequestContext{&geometry, rows, index_, info.id, info.workload, info.prompt_tokens,
                                   info.decode_steps, combine_seeds(combine_seeds(options_.seed, info.seed), index_),
                                   run.session->d_query(), run.session->d_key(), run.session->qk_dim(),
                                   run.session->prefill_observation(), run.session->prefill_window(),
                                   run.session->feature_layers()};
      check_needs(*run.resolved, run.request, backend_.describe());
      run.ledger = std::make_unique<Ledger>(geometry, rows, info.prompt_tokens, options_.timing, arrival);
      run.plan.keep = run.ledger->target();
      run.policy->on_request(run.request, run.plan);
      run.sums.requests = 1;
      run.sums.arrival = arrival;
      run.sums.criterion = options_.resolved;
      if (run.resolved->descriptor->oracle) lookahead = std::max(lookahead, run.policy->oracle_lookahead());
    }
    prefill.reset();  // the sessions hold what they share of it
    std::optional<SessionOracle> oracle;
    if (!closed) {
      shared->set_lookahead(lookahead);
      oracle.emplace(*shared, info.decode_steps - 1);
    }

    CriticalSets critical;
    for (int64_t t = 0; t < info.decode_steps; ++t) {
      if (closed && backend_.batches_sessions()) {
        // Every policy's step is launched before any is finished: the backend computes them
        // together. Each run has its own ledger and session, so only the order changes.
        std::vector<PolicyRun*> launched;
        for (PolicyRun& run : runs) {
          run.ended = run.ended || !run.session->begin_step(t);
          if (run.ended) continue;
          launch_closed_loop(run, t);
          launched.push_back(&run);
        }
        if (launched.empty()) break;
        for (PolicyRun* run : launched) {
          finish_closed_loop(*run, t, critical);
          count_progress(progress_steps, progress_total);
        }
      } else if (closed) {
        bool any = false;
        for (PolicyRun& run : runs) {
          run.ended = run.ended || !run.session->begin_step(t);
          if (run.ended) continue;
          any = true;
          step_closed_loop(run, t, critical);
          count_progress(progress_steps, progress_total);
        }
        if (!any) break;
      } else {
        if (!shared->begin_step(t)) break;
        // Open loop: the true attention is known before the step.
        const StepMass* reference = shared->reference();
        if (reference != nullptr) compute_critical_sets(*reference, options_.critical_mass, critical);
        oracle->at(t);
        for (PolicyRun& run : runs) step_open_loop(run, t, reference, critical, *oracle);
        count_progress(progress_steps, progress_total);
      }
    }
    std::vector<MetricSums> out;
    const RequestLocality locality = locality_of_workload(info.workload);
    for (auto& run : runs) {
      if (options_.on_request_end) options_.on_request_end(index_, run.index, *run.session);
      run.sums.close_request(locality);
      out.push_back(run.sums);
    }
    return out;
  }

 private:
  void count_progress(std::atomic<int64_t>& steps, int64_t total) const {
    const int64_t done = steps.fetch_add(1, std::memory_order_relaxed) + 1;
    if (options_.progress) options_.progress(done, total);
  }

  /// Asks the policy for step t's plan and applies it to the ledger.
  StepContext plan_step(PolicyRun& run, int64_t t, const OracleView* oracle) {
    Ledger& ledger = *run.ledger;
    RequestSession& session = *run.session;
    const int64_t n_tokens = run.request.prompt_tokens + t + 1;
    ledger.begin_step(t, n_tokens);

    StepContext ctx;
    ctx.request = &run.request;
    ctx.step = t;
    ctx.n_tokens = n_tokens;
    ctx.n_chunks = ledger.n_chunks();
    ctx.n_complete_chunks = run.request.geometry->complete_chunks_for(n_tokens);
    ctx.query = session.query();
    ctx.read_features = [&session, complete = ctx.n_complete_chunks] {
      FeatureRows features = session.chunk_features();
      features.n_rows = std::min(features.n_rows, complete);  // complete chunks only
      return features;
    };
    ctx.read_query_vectors = [&session] { return session.query_vectors(); };
    ctx.read_chunk_keys = [&session, complete = ctx.n_complete_chunks](ChunkKeys which) {
      RowVectors keys = session.chunk_keys(which);
      keys.items = std::min(keys.items, complete);  // complete chunks only
      return keys;
    };
    ctx.resident = &ledger.resident();
    ctx.in_flight = &ledger.in_flight();
    ctx.dropped = &ledger.dropped_any();
    ctx.oracle = run.resolved->descriptor->oracle ? oracle : nullptr;

    run.plan.keep = ledger.target();
    const int64_t interval = run.policy->refresh_interval();
    if (interval > 0 && t % interval == 0) run.policy->on_refresh(ctx, run.plan);
    run.policy->on_step(ctx, run.plan);
    ledger.apply(run.plan);
    check_budget(run, ctx);
    return ctx;
  }

  void step_open_loop(PolicyRun& run, int64_t t, const StepMass* reference, const CriticalSets& critical,
                      const SessionOracle& oracle) {
    (void)plan_step(run, t, &oracle);
    record(run, t, reference, critical);
    if (run.policy->wants_attention() && reference != nullptr) {
      const RestrictedAttention view(*reference, run.ledger->resident(), run.row_mass);
      run.policy->on_attention(FeedbackContext{&run.request, t, &run.ledger->resident(), &view});
    }
    run.ledger->end_step();
  }

  void step_closed_loop(PolicyRun& run, int64_t t, CriticalSets& critical) {
    launch_closed_loop(run, t);
    finish_closed_loop(run, t, critical);
  }

  /// Plans step t, hands the session its I/O and takes the arrivals it reports.
  void launch_closed_loop(PolicyRun& run, int64_t t) {
    (void)plan_step(run, t, nullptr);
    Ledger& ledger = *run.ledger;
    RequestSession& session = *run.session;
    const StepIO io = step_io(ledger, t);
    session.launch(t, io);
    if (ledger.arrival() == ArrivalMode::Measured) {
      Residency landed(ledger.in_flight().layout(), ledger.n_chunks());
      session.report_arrivals(t, ledger.in_flight(), landed);
      ledger.land_reported(landed);
    }
  }

  /// Finishes step t (launched) and measures it.
  void finish_closed_loop(PolicyRun& run, int64_t t, CriticalSets& critical) {
    Ledger& ledger = *run.ledger;
    RequestSession& session = *run.session;
    const StepIO io = step_io(ledger, t);
    const StepMass* observed = session.finish(t, io);
    // The full attention of the step just computed, if the backend gives it.
    const StepMass* reference = session.reference();
    if (reference != nullptr) compute_critical_sets(*reference, options_.critical_mass, critical);
    record(run, t, reference, critical);
    if (run.policy->wants_attention() && observed != nullptr) {
      const ComputedAttention view(*observed);
      run.policy->on_attention(FeedbackContext{&run.request, t, &ledger.resident(), &view});
    }
    ledger.end_step();
  }

  static StepIO step_io(const Ledger& ledger, int64_t t) {
    const StepDeltas& d = ledger.deltas();
    StepIO io;
    io.step = t;
    io.n_tokens = ledger.n_tokens();
    io.resident = &ledger.resident();
    io.in_flight = &ledger.in_flight();
    io.fetched = &d.fetched;
    io.evicted = &d.evicted;
    io.dropped = &d.dropped;
    io.cancelled = &d.cancelled;
    io.landed = &d.landed;
    io.tiers = ledger.tiers();
    io.evict_to = ledger.evict_to();
    io.arrival = ledger.arrival();
    return io;
  }

  void record(PolicyRun& run, int64_t t, const StepMass* reference, const CriticalSets& critical) {
    StepRecord step = measure_step(*run.ledger, reference, critical, &run.row_mass);
    step.request = index_;
    step.policy = run.index;
    step.step = t;
    run.sums.add(step);
    if (options_.on_step) options_.on_step(step);
  }

  static void check_budget(const PolicyRun& run, const StepContext& ctx) {
    const int64_t budget = run.policy->budget_bytes(ctx);
    const int64_t footprint = run.ledger->bytes().footprint();
    if (budget >= 0 && footprint > budget) {
      throw PolicyContractError("policy " + run.resolved->label + " exceeded its budget at request " +
                                run.request.request_id + " step " + std::to_string(ctx.step) + ": footprint " +
                                std::to_string(footprint) + " bytes > budget " + std::to_string(budget) + " bytes");
    }
  }

  Backend& backend_;
  int64_t index_;
  const EngineOptions& options_;
};

/// Refuses, before any request is opened or prefilled, what the backend cannot run.
void check_runnable(const Backend& backend, const std::vector<ResolvedPolicy>& policies) {
  if (policies.empty()) throw UsageError("--policy: give at least one policy");
  if (!backend.closed_loop() && backend.arrival_mode() == ArrivalMode::Measured) {
    throw UsageError("measured fetch arrival needs a closed-loop backend; " + backend.describe() + " is open loop");
  }
  if (!backend.closed_loop()) return;
  for (const auto& p : policies) {
    if (p.descriptor->oracle) {
      throw UsageError("policy " + p.label +
                       " is an oracle: it needs a step's attention before the step runs, which a live backend "
                       "cannot give; replay a recorded trace instead (kvlab record, then kvlab replay)");
    }
  }
}

/// Asks each policy, on one fresh instance, whether it can run each request (the facts known
/// before a request is opened: geometry, ids, lengths).
void check_requests_fit(const Backend& backend, const std::vector<ResolvedPolicy>& policies,
                        const std::vector<std::pair<int64_t, RequestInfo>>& requests) {
  for (const ResolvedPolicy& p : policies) {
    const std::unique_ptr<Policy> policy = p.instantiate();
    for (const auto& [index, info] : requests) {
      RequestContext r;
      r.geometry = &backend.geometry();
      r.rows = backend.rows();
      r.request_index = index;
      r.request_id = info.id;
      r.workload = info.workload;
      r.prompt_tokens = info.prompt_tokens;
      r.decode_steps = info.decode_steps;
      r.feature_layers = backend.feature_layers();
      policy->check_request(r);
    }
  }
}

}  // namespace

void check_policies_fit(Backend& backend, const std::vector<ResolvedPolicy>& policies) {
  std::vector<std::pair<int64_t, RequestInfo>> requests;
  for (int64_t i = 0; i < backend.requests(); ++i) requests.emplace_back(i, backend.request_info(i));
  check_requests_fit(backend, policies, requests);
}

std::vector<MetricSums> run_request(Backend& backend, int64_t index, const std::vector<ResolvedPolicy>& policies,
                                    const EngineOptions& options, std::shared_ptr<const PrefilledRequest> prefill) {
  check_runnable(backend, policies);
  if (!prefill) check_requests_fit(backend, policies, {{index, backend.request_info(index)}});
  std::atomic<int64_t> progress{0};
  const int64_t steps = backend.request_info(index).decode_steps;
  const int64_t total = backend.closed_loop() ? steps * static_cast<int64_t>(policies.size()) : steps;
  RequestRunner runner(backend, index, options);
  return runner.run(policies, std::move(prefill), progress, total);
}

std::vector<PolicyResult> results_from_sums(const std::vector<MetricSums>& sums,
                                            const std::vector<ResolvedPolicy>& policies) {
  std::vector<PolicyResult> results;
  for (size_t p = 0; p < policies.size(); ++p) {
    PolicyResult r = PolicyResult::from_sums(sums[p]);
    r.policy = policies[p].label;
    r.name = policies[p].descriptor->name;
    r.oracle = policies[p].descriptor->oracle;
    results.push_back(std::move(r));
  }
  return results;
}

std::vector<PolicyResult> run_engine(Backend& backend, const std::vector<ResolvedPolicy>& policies,
                                     const EngineOptions& options) {
  check_runnable(backend, policies);
  const int64_t n_requests = backend.requests();
  const int n_policies = static_cast<int>(policies.size());
  std::vector<std::pair<int64_t, RequestInfo>> requests;
  int64_t total_steps = 0;
  for (int64_t i = 0; i < n_requests; ++i) {
    requests.emplace_back(i, backend.request_info(i));
    total_steps += requests.back().second.decode_steps;
  }
  check_requests_fit(backend, policies, requests);  // before any request is prefilled
  // Closed loop counts a step per policy (each runs the model); open loop one per request step.
  const int64_t progress_total = backend.closed_loop() ? total_steps * n_policies : total_steps;

  std::vector<std::vector<MetricSums>> per_request(static_cast<size_t>(n_requests));
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> progress{0};
  std::atomic<bool> failed{false};
  std::exception_ptr error;
  std::mutex error_mutex;

  auto worker = [&] {
    for (int64_t i = next.fetch_add(1); i < n_requests && !failed.load(); i = next.fetch_add(1)) {
      try {
        RequestRunner runner(backend, i, options);
        per_request[static_cast<size_t>(i)] = runner.run(policies, nullptr, progress, progress_total);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
        failed = true;
      }
    }
  };
  int threads = options.threads > 0 ? options.threads : static_cast<int>(std::thread::hardware_concurrency());
  threads = static_cast<int>(std::clamp<int64_t>(threads, 1, std::max<int64_t>(n_requests, 1)));
  if (threads == 1) {
    worker();
  } else {
    std::vector<std::thread> pool;
    for (int i = 0; i < threads; ++i) pool.emplace_back(worker);
    for (auto& t : pool) t.join();
  }
  if (error) std::rethrow_exception(error);

  // Merge in request order so the result does not depend on the thread count.
  std::vector<MetricSums> sums(static_cast<size_t>(n_policies));
  for (int64_t i = 0; i < n_requests; ++i) {
    for (int p = 0; p < n_policies; ++p) sums[p].merge(per_request[i][p]);
  }
  return results_from_sums(sums, policies);
}

}  // namespace kvlab
