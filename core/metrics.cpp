#include "core/metrics.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "core/error.hpp"

namespace kvlab {
namespace {

// Dense rows are not sorted. The critical set is usually a few dozen chunks out of thousands,
// so select instead of sorting: take the top k (nth_element, linear), and only if they do not
// reach p, grow k. Ties break by chunk index so the set is deterministic.
void dense_critical(std::span<const float> values, double p, std::vector<uint32_t>& out,
                    std::vector<uint32_t>& scratch) {
  scratch.clear();
  double total = 0;
  for (size_t c = 0; c < values.size(); ++c) {
    if (values[c] > 0) {
      scratch.push_back(static_cast<uint32_t>(c));
      total += values[c];
    }
  }
  const auto before = [&](uint32_t a, uint32_t b) { return values[a] != values[b] ? values[a] > values[b] : a < b; };
  const double target = std::min(p, total);  // a row short of p (rounding) closes with all its chunks
  size_t k = std::min<size_t>(64, scratch.size());
  for (;;) {
    std::nth_element(scratch.begin(), scratch.begin() + static_cast<std::ptrdiff_t>(k), scratch.end(), before);
    std::sort(scratch.begin(), scratch.begin() + static_cast<std::ptrdiff_t>(k), before);
    double sum = 0;
    size_t taken = 0;
    while (taken < k && sum < p) sum += values[scratch[taken++]];
    if (sum >= target || k == scratch.size()) {
      out.insert(out.end(), scratch.begin(), scratch.begin() + static_cast<std::ptrdiff_t>(taken));
      return;
    }
    k = std::min(k * 4, scratch.size());
  }
}

void sparse_critical(const MassRow& row, double p, std::vector<uint32_t>& out) {
  double sum = 0;
  for (size_t i = 0; i < row.value.size() && sum < p; ++i) {
    out.push_back(row.index[i]);
    sum += row.value[i];
  }
}

}  // namespace

void compute_critical_sets(const StepMass& mass, double p, CriticalSets& out) {
  out.offsets.assign(1, 0);
  out.chunks.clear();
  thread_local std::vector<uint32_t> scratch;
  for (int r = 0; r < mass.rows(); ++r) {
    const MassRow row = mass.row(r);
    if (row.sparse()) {
      sparse_critical(row, p, out.chunks);
    } else {
      dense_critical(row.value, p, out.chunks, scratch);
    }
    out.offsets.push_back(static_cast<int64_t>(out.chunks.size()));
  }
}

RowRecall row_recall(const StepMass& mass, int r, std::span<const uint32_t> critical,
                     const ChunkMask& resident, int64_t resident_count) {
  RowRecall out;
  int64_t hit = 0;
  for (uint32_t c : critical) hit += resident.test(c) ? 1 : 0;
  out.critical = critical.empty() ? 1.0 : static_cast<double>(hit) / static_cast<double>(critical.size());

  const MassRow row = mass.row(r);
  double listed = 0;
  if (!row.sparse()) {
    const int64_t n = std::min<int64_t>(static_cast<int64_t>(row.value.size()), resident.size());
    for (int64_t c = 0; c < n; ++c) listed += resident.test(c) ? row.value[c] : 0.0F;
    out.mass = listed;
    return out;
  }
  int64_t listed_resident = 0;
  for (size_t i = 0; i < row.value.size(); ++i) {
    if (row.index[i] < resident.size() && resident.test(row.index[i])) {
      listed += row.value[i];
      ++listed_resident;
    }
  }
  const int64_t unlisted = mass.n_chunks() - static_cast<int64_t>(row.value.size());
  if (unlisted > 0 && row.remainder > 0) {
    listed += row.remainder * static_cast<double>(resident_count - listed_resident) / static_cast<double>(unlisted);
  }
  out.mass = listed;
  return out;
}

StepRecord measure_step(const Ledger& ledger, const StepMass* reference, const CriticalSets& critical,
                        std::vector<double>* row_mass) {
  StepRecord record;
  record.n_tokens = ledger.n_tokens();
  record.resident = &ledger.resident();
  record.bytes = ledger.bytes();
  record.full_bytes = ledger.full_bytes();
  record.fetch_bytes = ledger.fetch_bytes_this_step();
  if (reference == nullptr) return record;

  const Residency& resident = ledger.resident();
  const Residency& flight = ledger.in_flight();
  const int rows = reference->rows();
  if (row_mass != nullptr) row_mass->assign(static_cast<size_t>(rows), 0.0);
  const int64_t uniform_count = resident.uniform() ? ledger.resident_count(0) : -1;
  for (int r = 0; r < rows; ++r) {
    const auto crit = critical.row(r);
    const int64_t count = uniform_count >= 0 ? uniform_count : ledger.resident_count(r);
    const RowRecall recall = row_recall(*reference, r, crit, resident.row(r), count);
    if (row_mass != nullptr) (*row_mass)[static_cast<size_t>(r)] = recall.mass;
    record.critical_recall_sum += recall.critical;
    record.mass_recall_sum += recall.mass;
    for (uint32_t c : crit) record.late += flight.contains(r, c) ? 1 : 0;
    record.critical_chunks += static_cast<int64_t>(crit.size());
  }
  record.recall_rows = rows;
  record.critical_recall = record.critical_recall_sum / rows;
  record.mass_recall = record.mass_recall_sum / rows;
  return record;
}

void ResolvedCriterion::validate(const std::string& what) const {
  if (!(recall > 0 && recall <= 1)) throw UsageError(what + " must be in (0, 1], got " + std::to_string(recall));
  if (!(step_share > 0 && step_share <= 1)) {
    throw UsageError(what + ": the share of steps must be in (0, 1], got " + std::to_string(step_share));
  }
}

RequestLocality locality_of_workload(std::string_view workload) {
  const size_t slash = workload.rfind('/');
  const std::string_view kind = slash == std::string_view::npos ? workload : workload.substr(slash + 1);
  if (kind == "local") return RequestLocality::Local;
  for (const std::string_view remote : {"needle", "multi_needle", "multi_hop", "diffuse"}) {
    if (kind == remote) return RequestLocality::Remote;
  }
  return RequestLocality::Unlabelled;
}

double ResolvedCounts::fraction() const {
  return requests > 0 ? static_cast<double>(resolved) / static_cast<double>(requests)
                      : std::numeric_limits<double>::quiet_NaN();
}

void MetricSums::add(const StepRecord& s) {
  const TierBytes& b = s.bytes;
  steps += 1;
  footprint_ratio += static_cast<double>(b.footprint()) / static_cast<double>(s.full_bytes);
  footprint_bytes += static_cast<double>(b.footprint());
  hbm_kv_bytes += static_cast<double>(b.hbm_kv);
  hbm_summary_bytes += static_cast<double>(b.hbm_summary);
  hbm_index_bytes += static_cast<double>(b.hbm_index);
  host_bytes += static_cast<double>(b.host);
  footprint_peak_bytes = std::max(footprint_peak_bytes, b.footprint());
  full_peak_bytes = std::max(full_peak_bytes, s.full_bytes);
  fetch_bytes += s.fetch_bytes;
  if (s.recall_rows == 0) return;
  recall_rows += s.recall_rows;
  critical_recall += s.critical_recall_sum;
  mass_recall += s.mass_recall_sum;
  late_fetches += s.late;
  critical_rows_total += s.critical_chunks;
  // The step's own mean, recomputed from its sum; a tiny tolerance keeps a step whose rows
  // all reach r from failing on the last bit of the division.
  const double step_recall = s.critical_recall_sum / s.recall_rows;
  open_measured_steps += 1;
  open_met_steps += step_recall >= criterion.recall - 1e-12 ? 1 : 0;
}

void MetricSums::close_request(RequestLocality locality) {
  if (open_measured_steps > 0) {
    // met / measured >= step_share, without the rounding of a division.
    const bool resolved = static_cast<double>(open_met_steps) >=
                          criterion.step_share * static_cast<double>(open_measured_steps) - 1e-9;
    const ResolvedCounts one{1, resolved ? 1 : 0};
    resolved_all.merge(one);
    if (locality == RequestLocality::Remote) resolved_remote.merge(one);
    if (locality == RequestLocality::Local) resolved_local.merge(one);
  }
  open_measured_steps = 0;
  open_met_steps = 0;
}

void MetricSums::merge(const MetricSums& o) {
  requests += o.requests;
  steps += o.steps;
  recall_rows += o.recall_rows;
  critical_recall += o.critical_recall;
  mass_recall += o.mass_recall;
  footprint_ratio += o.footprint_ratio;
  footprint_bytes += o.footprint_bytes;
  hbm_kv_bytes += o.hbm_kv_bytes;
  hbm_summary_bytes += o.hbm_summary_bytes;
  hbm_index_bytes += o.hbm_index_bytes;
  host_bytes += o.host_bytes;
  footprint_peak_bytes = std::max(footprint_peak_bytes, o.footprint_peak_bytes);
  full_peak_bytes = std::max(full_peak_bytes, o.full_peak_bytes);
  fetch_bytes += o.fetch_bytes;
  late_fetches += o.late_fetches;
  critical_rows_total += o.critical_rows_total;
  arrival = o.arrival;
  criterion = o.criterion;
  open_measured_steps += o.open_measured_steps;
  open_met_steps += o.open_met_steps;
  resolved_all.merge(o.resolved_all);
  resolved_remote.merge(o.resolved_remote);
  resolved_local.merge(o.resolved_local);
}

PolicyResult PolicyResult::from_sums(const MetricSums& s) {
  PolicyResult r;
  const double steps = s.steps > 0 ? static_cast<double>(s.steps) : std::numeric_limits<double>::quiet_NaN();
  const double rows = s.recall_rows > 0 ? static_cast<double>(s.recall_rows) : std::numeric_limits<double>::quiet_NaN();
  r.requests = s.requests;
  r.steps = s.steps;
  r.footprint_mean_ratio = s.footprint_ratio / steps;
  r.footprint_mean_bytes = s.footprint_bytes / steps;
  r.footprint_peak_bytes = s.footprint_peak_bytes;
  r.full_peak_bytes = s.full_peak_bytes;
  r.hbm_kv_mean_bytes = s.hbm_kv_bytes / steps;
  r.hbm_summary_mean_bytes = s.hbm_summary_bytes / steps;
  r.hbm_index_mean_bytes = s.hbm_index_bytes / steps;
  r.host_mean_bytes = s.host_bytes / steps;
  r.critical_recall = s.critical_recall / rows;
  r.mass_recall = s.mass_recall / rows;
  r.critical_set_mean_size = static_cast<double>(s.critical_rows_total) / rows;
  r.fetch_bytes = s.fetch_bytes;
  r.late_fetches = s.late_fetches;
  r.arrival = s.arrival;
  r.criterion = s.criterion;
  r.resolved_requests = s.resolved_all.resolved;
  r.resolved_fraction = s.resolved_all.fraction();
  r.remote_requests = s.resolved_remote.requests;
  r.remote_resolved_fraction = s.resolved_remote.fraction();
  r.local_requests = s.resolved_local.requests;
  r.local_resolved_fraction = s.resolved_local.fraction();
  return r;
}

}  // namespace kvlab
