#include "traces/stats.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <numeric>

#include "core/error.hpp"

namespace kvlab {

void LocalityOptions::validate() const {
  if (window_tokens < 0) throw UsageError("--window: must be >= 0, got " + std::to_string(window_tokens));
  if (sink_tokens < 0) throw UsageError("--sinks: must be >= 0, got " + std::to_string(sink_tokens));
  if (!(critical_mass > 0.0 && critical_mass <= 1.0)) {
    throw UsageError("--critical-mass: must be in (0, 1], got " + std::to_string(critical_mass));
  }
  if (!(resolvable_fraction >= 0.0 && resolvable_fraction <= 1.0)) {
    throw UsageError("resolvable fraction must be in [0, 1]");
  }
}

std::vector<int64_t> critical_chunks(const MassRow& row, double critical_mass) {
  std::vector<int64_t> out;
  // A tiny tolerance so a row that sums to 1 in float still reaches p = 1.
  const double target = critical_mass - 1e-6;
  // Walks entries in decreasing order until the cumulative mass reaches the target; returns
  // false if the first `count` entries of `order` did not suffice.
  auto walk = [&](const auto& order, size_t count) {
    out.clear();
    double cumulative = 0.0;
    for (size_t k = 0; k < count; ++k) {
      if (cumulative >= target) return true;
      const size_t i = order[k];
      if (row.value[i] <= 0.0F) return true;
      cumulative += row.value[i];
      out.push_back(row.chunk_of(i));
    }
    return cumulative >= target;
  };
  std::vector<size_t> order(row.value.size());
  std::iota(order.begin(), order.end(), size_t{0});
  if (row.sparse()) {  // stored in decreasing order already: the set is a prefix
    walk(order, order.size());
    return out;
  }
  // Dense rows: critical sets are usually far smaller than the row, so sort a growing prefix.
  auto by_mass = [&](size_t a, size_t b) {
    return row.value[a] != row.value[b] ? row.value[a] > row.value[b] : a < b;
  };
  for (size_t k = std::min<size_t>(64, order.size());; k = std::min(order.size(), k * 4)) {
    std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(k), order.end(), by_mass);
    if (walk(order, k) || k == order.size()) return out;
  }
}

LocalityCounter::LocalityCounter(const Geometry& geometry, const RequestHeader& header,
                                 const LocalityOptions& options)
    : geometry_(geometry), header_(header), options_(options) {
  options_.validate();
}

bool LocalityCounter::chunk_is_local(int64_t t, int64_t chunk) const {
  const int64_t n = header_.prompt_tokens + t + 1;
  if (chunk < geometry_.chunks_for(options_.sink_tokens)) return true;
  const int64_t first_recent = std::max<int64_t>(0, n - options_.window_tokens) / geometry_.chunk_tokens;
  return chunk >= first_recent;
}

void LocalityCounter::add_step(int64_t t, const StepMass& mass) {
  const int64_t n = header_.prompt_tokens + t + 1;
  if (mass.n_chunks() != geometry_.chunks_for(n)) {
    throw InputError("request " + header_.id + " step " + std::to_string(t) + ": " +
                     std::to_string(mass.n_chunks()) + " chunks, expected " +
                     std::to_string(geometry_.chunks_for(n)));
  }
  bool local = true;
  for (int r = 0; r < mass.rows(); ++r) {
    const auto critical = critical_chunks(mass.row(r), options_.critical_mass);
    const auto size = static_cast<int64_t>(critical.size());
    critical_sum_ += static_cast<double>(size);
    critical_max_ = std::max(critical_max_, size);
    ++rows_seen_;
    if (!local) continue;
    for (int64_t c : critical) {
      if (!chunk_is_local(t, c)) {
        local = false;
        break;
      }
    }
  }
  ++steps_;
  if (local) ++local_steps_;
}

RequestLocality LocalityCounter::result() const {
  RequestLocality r;
  r.id = header_.id;
  r.workload = header_.workload;
  r.prompt_tokens = header_.prompt_tokens;
  r.steps = steps_;
  r.local_steps = local_steps_;
  r.mean_critical_chunks = rows_seen_ > 0 ? critical_sum_ / static_cast<double>(rows_seen_) : 0.0;
  r.max_critical_chunks = critical_max_;
  r.locally_resolvable = steps_ > 0 && r.local_step_fraction() >= options_.resolvable_fraction;
  return r;
}

int64_t TraceStats::steps() const {
  int64_t s = 0;
  for (const auto& r : requests) s += r.steps;
  return s;
}

int64_t TraceStats::local_steps() const {
  int64_t s = 0;
  for (const auto& r : requests) s += r.local_steps;
  return s;
}

double TraceStats::local_step_fraction() const {
  const int64_t s = steps();
  return s > 0 ? static_cast<double>(local_steps()) / static_cast<double>(s) : 0.0;
}

int64_t TraceStats::resolvable_requests() const {
  return std::count_if(requests.begin(), requests.end(), [](const auto& r) { return r.locally_resolvable; });
}

double TraceStats::resolvable_fraction() const {
  return requests.empty() ? 0.0
                          : static_cast<double>(resolvable_requests()) / static_cast<double>(requests.size());
}

double TraceStats::resolvable_fraction_over(int64_t min_prompt_tokens, int64_t* count) const {
  int64_t n = 0;
  int64_t ok = 0;
  for (const auto& r : requests) {
    if (r.prompt_tokens <= min_prompt_tokens) continue;
    ++n;
    if (r.locally_resolvable) ++ok;
  }
  if (count != nullptr) *count = n;
  return n > 0 ? static_cast<double>(ok) / static_cast<double>(n) : 0.0;
}

TraceStats compute_stats(const std::string& trace_path, int64_t window_tokens, int64_t sink_tokens,
                         double critical_mass) {
  TraceStats stats;
  stats.path = trace_path;
  stats.options.window_tokens = window_tokens;
  stats.options.sink_tokens = sink_tokens;
  stats.options.critical_mass = critical_mass;
  stats.options.validate();
  const auto reader = TraceReader::open(trace_path);
  StepMass mass;
  for (int64_t i = 0; i < reader->request_count(); ++i) {
    const auto request = reader->request(i);
    LocalityCounter counter(reader->geometry(), request->header(), stats.options);
    for (int64_t t = 0; t < request->header().decode_steps; ++t) {
      request->read_step(t, mass);
      counter.add_step(t, mass);
    }
    stats.requests.push_back(counter.result());
  }
  return stats;
}

namespace {

std::string line(const char* fmt, auto... args) {
  char buf[256];
  std::snprintf(buf, sizeof(buf), fmt, args...);
  return buf;
}

}  // namespace

std::string format_stats(const TraceStats& stats) {
  std::string out;
  out += line("# locality of %s: window %lld tokens, sinks %lld tokens, critical mass %.3g\n",
              stats.path.c_str(), static_cast<long long>(stats.options.window_tokens),
              static_cast<long long>(stats.options.sink_tokens), stats.options.critical_mass);
  out += line("%-10s %-20s %10s %7s %10s %9s %8s %10s\n", "request", "workload", "prompt", "steps",
              "local_frac", "crit_mean", "crit_max", "resolvable");
  for (const auto& r : stats.requests) {
    out += line("%-10s %-20s %10lld %7lld %10.4f %9.1f %8lld %10s\n", r.id.c_str(), r.workload.c_str(),
                static_cast<long long>(r.prompt_tokens), static_cast<long long>(r.steps),
                r.local_step_fraction(), r.mean_critical_chunks,
                static_cast<long long>(r.max_critical_chunks), r.locally_resolvable ? "yes" : "no");
  }
  struct Group {
    int64_t requests = 0, resolvable = 0, steps = 0, local_steps = 0;
  };
  std::map<std::string, Group> groups;
  for (const auto& r : stats.requests) {
    Group& g = groups[r.workload];
    ++g.requests;
    g.resolvable += r.locally_resolvable ? 1 : 0;
    g.steps += r.steps;
    g.local_steps += r.local_steps;
  }
  out += line("\n%-20s %8s %10s %10s %16s\n", "workload", "requests", "resolvable", "local_frac",
              "resolvable_frac");
  for (const auto& [name, g] : groups) {
    out += line("%-20s %8lld %10lld %10.4f %16.4f\n", name.c_str(), static_cast<long long>(g.requests),
                static_cast<long long>(g.resolvable),
                g.steps > 0 ? static_cast<double>(g.local_steps) / static_cast<double>(g.steps) : 0.0,
                static_cast<double>(g.resolvable) / static_cast<double>(g.requests));
  }
  out += line("%-20s %8lld %10lld %10.4f %16.4f\n", "all", static_cast<long long>(stats.requests.size()),
              static_cast<long long>(stats.resolvable_requests()), stats.local_step_fraction(),
              stats.resolvable_fraction());
  int64_t long_count = 0;
  const double long_fraction = stats.resolvable_fraction_over(65536, &long_count);
  if (long_count > 0) {
    out += line("requests longer than 64K tokens: %lld, locally resolvable: %.4f\n",
                static_cast<long long>(long_count), long_fraction);
  }
  return out;
}

}  // namespace kvlab
