#include "core/engine.hpp"

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <thread>

#include "core/error.hpp"

namespace kvlab {
namespace {

uint64_t mix_seed(uint64_t a, uint64_t b) {
  // splitmix64 finaliser over the combination: distinct inputs give unrelated streams.
  uint64_t z = a * 0x9E3779B97F4A7C15ULL + b + 0x632BE59BD9B4E019ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

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
};

class RequestRunner {
 public:
  RequestRunner(Backend& backend, int64_t request_index, const EngineOptions& options)
      : backend_(backend), index_(request_index), options_(options) {}

  /// Runs `policies` over one session of this request, in lockstep; returns their sums.
  std::vector<MetricSums> run(const std::vector<ResolvedPolicy>& all, const std::vector<int>& which,
                              std::atomic<int64_t>& progress_steps, int64_t progress_total) {
    auto session = backend_.open(index_);
    const RequestInfo& info = session->info();
    const Geometry& geometry = backend_.geometry();
    const RowLayout rows = backend_.rows();

    std::vector<PolicyRun> runs(which.size());
    int64_t lookahead = 0;
    for (size_t k = 0; k < which.size(); ++k) {
      PolicyRun& run = runs[k];
      run.resolved = &all[which[k]];
      run.index = which[k];
      run.policy = run.resolved->instantiate();
      run.request = RequestContext{&geometry, rows, index_, info.id, info.workload, info.prompt_tokens,
                                   info.decode_steps, mix_seed(mix_seed(options_.seed, info.seed), index_),
                                   session->d_query(), session->d_key()};
      run.ledger = std::make_unique<Ledger>(geometry, rows, info.prompt_tokens, options_.timing);
      run.plan.keep = run.ledger->target();
      run.policy->on_request(run.request, run.plan);
      run.sums.requests = 1;
      if (run.resolved->descriptor->oracle) lookahead = std::max(lookahead, run.policy->oracle_lookahead());
    }
    if (session->closed_loop() && lookahead > 0) {
      throw UsageError("an oracle with lookahead needs future attention, which a live backend cannot give");
    }
    session->set_lookahead(lookahead);
    SessionOracle oracle(*session, info.decode_steps - 1);

    if (session->closed_loop() && std::any_of(runs.begin(), runs.end(), [](const PolicyRun& r) {
          return r.resolved->descriptor->oracle;
        })) {
      throw UsageError("policy " + runs.front().resolved->label +
                       " is an oracle: it needs a step's attention before the step runs, which a live backend "
                       "cannot give; replay a recorded trace instead (kvlab record, then kvlab replay)");
    }
    CriticalSets critical;
    for (int64_t t = 0; t < info.decode_steps; ++t) {
      if (!session->begin_step(t)) break;
      // Open loop: the true attention is known before the step. Closed loop: the backend computes
      // it while attending (step_policy picks it up after attend).
      const StepMass* reference = session->closed_loop() ? nullptr : session->reference();
      if (reference != nullptr) compute_critical_sets(*reference, options_.critical_mass, critical);
      oracle.at(t);
      for (PolicyRun& run : runs) step_policy(run, *session, t, reference, critical, oracle);
      progress_steps.fetch_add(1, std::memory_order_relaxed);
      if (options_.progress) options_.progress(progress_steps.load(std::memory_order_relaxed), progress_total);
    }
    std::vector<MetricSums> out;
    for (auto& run : runs) out.push_back(run.sums);
    return out;
  }

 private:
  void step_policy(PolicyRun& run, RequestSession& session, int64_t t, const StepMass* reference,
                   CriticalSets& critical, const SessionOracle& oracle) {
    Ledger& ledger = *run.ledger;
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
    ctx.resident = &ledger.resident();
    ctx.in_flight = &ledger.in_flight();
    ctx.dropped = &ledger.dropped_any();
    ctx.oracle = run.resolved->descriptor->oracle ? &oracle : nullptr;

    run.plan.keep = ledger.target();
    const int64_t interval = run.policy->refresh_interval();
    if (interval > 0 && t % interval == 0) run.policy->on_refresh(ctx, run.plan);
    run.policy->on_step(ctx, run.plan);
    ledger.apply(run.plan);
    check_budget(run, ctx);

    const StepMass* observed = nullptr;
    if (session.closed_loop()) {
      observed = session.attend(t, ledger.resident());
      reference = session.reference();  // full attention of the step just computed, if the backend gives it
      if (reference != nullptr) compute_critical_sets(*reference, options_.critical_mass, critical);
    }
    StepRecord record = measure(run, t, n_tokens, reference, critical);
    if (options_.on_step) options_.on_step(record);

    if (run.policy->wants_attention()) {
      FeedbackContext feedback{&run.request, t, &ledger.resident(), nullptr};
      if (observed != nullptr) {
        ComputedAttention view(*observed);
        feedback.attention = &view;
        run.policy->on_attention(feedback);
      } else if (reference != nullptr) {
        RestrictedAttention view(*reference, ledger.resident(), run.row_mass);
        feedback.attention = &view;
        run.policy->on_attention(feedback);
      }
    }
    ledger.end_step();
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

  StepRecord measure(PolicyRun& run, int64_t t, int64_t n_tokens, const StepMass* reference,
                     const CriticalSets& critical) {
    const Ledger& ledger = *run.ledger;
    const TierBytes bytes = ledger.bytes();
    MetricSums& s = run.sums;
    s.steps += 1;
    s.footprint_ratio += static_cast<double>(bytes.footprint()) / static_cast<double>(ledger.full_bytes());
    s.footprint_bytes += static_cast<double>(bytes.footprint());
    s.hbm_kv_bytes += static_cast<double>(bytes.hbm_kv);
    s.hbm_summary_bytes += static_cast<double>(bytes.hbm_summary);
    s.hbm_index_bytes += static_cast<double>(bytes.hbm_index);
    s.host_bytes += static_cast<double>(bytes.host);
    s.footprint_peak_bytes = std::max(s.footprint_peak_bytes, bytes.footprint());
    s.full_peak_bytes = std::max(s.full_peak_bytes, ledger.full_bytes());
    s.fetch_bytes += ledger.fetch_bytes_this_step();

    StepRecord record{index_, run.index, t, n_tokens, &ledger.resident(), bytes, ledger.fetch_bytes_this_step(), 0, 0, 0};
    if (reference == nullptr) return record;

    const Residency& resident = ledger.resident();
    const Residency& flight = ledger.in_flight();
    const int rows = reference->rows();
    run.row_mass.assign(static_cast<size_t>(rows), 0.0);
    const int64_t uniform_count = resident.uniform() ? ledger.resident_count(0) : -1;
    double step_critical = 0;
    double step_mass = 0;
    for (int r = 0; r < rows; ++r) {
      const auto crit = critical.row(r);
      const int64_t count = uniform_count >= 0 ? uniform_count : ledger.resident_count(r);
      const RowRecall recall = row_recall(*reference, r, crit, resident.row(r), count);
      run.row_mass[r] = recall.mass;
      step_critical += recall.critical;
      step_mass += recall.mass;
      for (uint32_t c : crit) record.late += flight.contains(r, c) ? 1 : 0;
      s.critical_rows_total += static_cast<int64_t>(crit.size());
    }
    s.recall_rows += rows;
    s.critical_recall += step_critical;
    s.mass_recall += step_mass;
    s.late_fetches += record.late;
    record.critical_recall = step_critical / rows;
    record.mass_recall = step_mass / rows;
    return record;
  }

  Backend& backend_;
  int64_t index_;
  const EngineOptions& options_;
};

}  // namespace

std::vector<PolicyResult> run_engine(Backend& backend, const std::vector<ResolvedPolicy>& policies,
                                     const EngineOptions& options) {
  const int64_t n_requests = backend.requests();
  const int n_policies = static_cast<int>(policies.size());
  if (n_policies == 0) throw UsageError("--policy: give at least one policy");

  // Closed-loop sessions change with the policy, so each policy gets its own session.
  const bool closed_loop = backend.closed_loop();
  int64_t total_steps = 0;
  for (int64_t i = 0; i < n_requests; ++i) total_steps += backend.request_info(i).decode_steps;
  std::vector<std::vector<int>> groups;
  if (closed_loop) {
    for (int p = 0; p < n_policies; ++p) groups.push_back({p});
  } else {
    groups.emplace_back();
    for (int p = 0; p < n_policies; ++p) groups.back().push_back(p);
  }
  const int64_t units = n_requests * static_cast<int64_t>(groups.size());
  const int64_t progress_total = total_steps * static_cast<int64_t>(groups.size());

  std::vector<std::vector<MetricSums>> per_unit(static_cast<size_t>(units));
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> progress{0};
  std::atomic<bool> failed{false};
  std::exception_ptr error;
  std::mutex error_mutex;

  auto worker = [&] {
    for (int64_t u = next.fetch_add(1); u < units && !failed.load(); u = next.fetch_add(1)) {
      const int64_t request = u / static_cast<int64_t>(groups.size());
      const auto& group = groups[static_cast<size_t>(u % static_cast<int64_t>(groups.size()))];
      try {
        RequestRunner runner(backend, request, options);
        per_unit[static_cast<size_t>(u)] = runner.run(policies, group, progress, progress_total);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
        failed = true;
      }
    }
  };
  int threads = options.threads > 0 ? options.threads : static_cast<int>(std::thread::hardware_concurrency());
  threads = static_cast<int>(std::clamp<int64_t>(threads, 1, std::max<int64_t>(units, 1)));
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
  for (int64_t u = 0; u < units; ++u) {
    const auto& group = groups[static_cast<size_t>(u % static_cast<int64_t>(groups.size()))];
    for (size_t k = 0; k < group.size(); ++k) sums[group[k]].merge(per_unit[u][k]);
  }
  std::vector<PolicyResult> results;
  for (int p = 0; p < n_policies; ++p) {
    PolicyResult r = PolicyResult::from_sums(sums[p]);
    r.policy = policies[p].label;
    r.name = policies[p].descriptor->name;
    r.oracle = policies[p].descriptor->oracle;
    results.push_back(std::move(r));
  }
  return results;
}

}  // namespace kvlab
