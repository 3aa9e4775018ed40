#include "backends/live/live_record.hpp"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>

#include "core/error.hpp"
#include "core/residency.hpp"

namespace kvlab {
namespace {

/// Mean over the KV heads of each layer: every head row sums to 1, so their mean does too.
void aggregate_heads(const StepMass& per_head, StepMass& out) {
  const RowLayout in = per_head.layout();
  out.reset_dense(RowLayout{in.n_layers, 1}, per_head.n_chunks());
  const auto inv = 1.0F / static_cast<float>(in.heads_stored);
  for (int l = 0; l < in.n_layers; ++l) {
    std::span<float> dst = out.dense_row(l);
    for (int h = 0; h < in.heads_stored; ++h) {
      const MassRow src = per_head.row(in.row(l, h));
      for (size_t c = 0; c < src.value.size(); ++c) dst[c] += src.value[c] * inv;
    }
  }
}

/// A session's rows as stored: per head, or aggregated per layer.
StepMass stored_rows(const StepMass& per_head, bool keep_heads) {
  if (keep_heads) return per_head;
  StepMass out;
  aggregate_heads(per_head, out);
  return out;
}

void append(std::vector<float>& out, const RowVectors& v) {
  out.insert(out.end(), v.data, v.data + v.items * v.rows * v.dim);
}

/// One request as it ran, kept until it ends: its step count is known only then, and the trace
/// header needs it.
struct Recording {
  std::vector<StepMass> mass;
  std::vector<std::vector<float>> query;
  std::vector<float> query_vectors;  // [steps × rows × qk_dim]
};

/// Runs every step the session gives, with every chunk resident (full attention); calls
/// `stepped` after each step.
Recording run_full_attention(RequestSession& session, const Geometry& geometry, RowLayout layout,
                             const RecordOptions& options, const std::function<void()>& stepped) {
  const RequestInfo& info = session.info();
  Recording rec;
  for (int64_t t = 0; t < info.decode_steps && session.begin_step(t); ++t) {
    const std::span<const float> q = session.query();
    rec.query.emplace_back(q.begin(), q.end());
    if (options.query_keys) append(rec.query_vectors, session.query_vectors());
    Residency all(layout, geometry.chunks_for(info.prompt_tokens + t + 1));
    all.set_all();
    StepIO io;
    io.step = t;
    io.n_tokens = info.prompt_tokens + t + 1;
    io.resident = &all;  // all resident, no tiers: this is full attention
    session.launch(t, io);
    rec.mass.push_back(stored_rows(*session.finish(t, io), options.per_head));
    stepped();
  }
  return rec;
}

/// A request recorded and not yet written: its session (chunk features and keys are read from
/// it at writing time) and its steps.
struct Recorded {
  std::unique_ptr<RequestSession> session;
  Recording rec;
  bool ready = false;
  std::exception_ptr error;
};

/// Records requests 0..n-1 on `threads` threads, at most `threads` of them alive (recording or
/// waiting to be written) at once, and hands each to `write` in request order on the calling
/// thread. A thread is a member of `group` only while it records (a member that waits for a
/// window would hold the others' batches back).
void record_in_flight(int64_t n, int threads, StepGroup* group, const std::function<Recorded(int64_t)>& record,
                      const std::function<void(int64_t, Recorded&)>& write) {
  std::vector<Recorded> slots(static_cast<size_t>(n));
  std::mutex mutex;
  std::condition_variable changed;
  int64_t next = 0;
  int64_t written = 0;
  bool failed = false;
  auto worker = [&] {
    for (;;) {
      int64_t i = 0;
      {
        std::unique_lock lock(mutex);
        changed.wait(lock, [&] { return failed || next >= n || next < written + threads; });
        if (failed || next >= n) return;
        i = next++;
      }
      Recorded r;
      try {
        const StepGroupMember member(group);
        r = record(i);
      } catch (...) {
        r.error = std::current_exception();
      }
      const std::lock_guard lock(mutex);
      slots[static_cast<size_t>(i)] = std::move(r);
      slots[static_cast<size_t>(i)].ready = true;
      changed.notify_all();
    }
  };
  std::vector<std::thread> pool;
  for (int k = 0; k < threads; ++k) pool.emplace_back(worker);
  std::exception_ptr error;
  for (int64_t i = 0; i < n && !error; ++i) {
    Recorded r;
    {
      std::unique_lock lock(mutex);
      changed.wait(lock, [&] { return slots[static_cast<size_t>(i)].ready; });
      r = std::move(slots[static_cast<size_t>(i)]);
    }
    try {
      if (r.error) std::rethrow_exception(r.error);
      write(i, r);
    } catch (...) {
      error = std::current_exception();
    }
    r = Recorded{};  // the session goes before the window opens
    const std::lock_guard lock(mutex);
    ++written;
    failed = failed || error != nullptr;
    changed.notify_all();
  }
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);
}

/// The complete chunks' rows of `rows_known` rows of `width` floats, zero-padded to `rows`.
std::vector<float> padded(const float* data, int64_t rows_known, int64_t width, int64_t rows) {
  std::vector<float> out(static_cast<size_t>(rows * width), 0.0F);
  std::copy(data, data + std::min(rows, rows_known) * width, out.begin());
  return out;
}

}  // namespace

RecordSummary record_trace(LiveBackend& backend, const std::string& path, const RecordOptions& options) {
  const Geometry& geometry = backend.geometry();
  const RowLayout layout = backend.rows();
  if (options.query_keys && backend.shape().qk_dim == 0) {
    throw InputError("record: the " + backend.describe() + " decoder does not report query and key vectors");
  }
  auto writer = TraceWriter::create(path, geometry);
  RecordSummary summary;
  int64_t total = 0;
  for (int64_t i = 0; i < backend.requests(); ++i) total += backend.request(i).info.decode_steps;

  const auto t0 = std::chrono::steady_clock::now();
  std::mutex progress_mutex;
  int64_t done = 0;
  const std::function<void()> stepped = [&] {
    const std::lock_guard lock(progress_mutex);
    ++done;
    if (options.progress) options.progress(done, total);
  };
  auto record = [&](int64_t i) {
    Recorded r;
    r.session = backend.open(i);
    r.rec = run_full_attention(*r.session, geometry, layout, options, stepped);
    return r;
  };
  auto write = [&](int64_t i, Recorded& recorded) {
    std::unique_ptr<RequestSession>& session = recorded.session;
    const Recording& rec = recorded.rec;
    const RequestInfo info = session->info();
    const auto steps = static_cast<int64_t>(rec.mass.size());
    summary.steps += steps;
    {
      const std::lock_guard lock(progress_mutex);
      total -= info.decode_steps - steps;  // a request that stopped early: its steps will not come
    }
    if (steps == 0) {
      ++summary.skipped;
      return;
    }
    RequestHeader header;
    header.id = info.id;
    header.prompt_tokens = info.prompt_tokens;
    header.decode_steps = steps;
    header.workload = info.workload;
    header.seed = info.seed;
    header.template_set = backend.request(i).template_set;
    header.template_variants = backend.request(i).template_variants;
    header.heads_stored = options.per_head ? layout.heads_stored : 1;
    header.d_query = session->d_query();
    header.d_key = session->d_key();
    // One feature layer: no feature_layers attribute, so such a recording is what it always was.
    if (const std::vector<int> layers = session->feature_layers(); layers.size() > 1) header.feature_layers = layers;
    // Aggregated rows hold their layer's KV heads side by side: the same floats, wider rows.
    const int64_t qk_dim = options.query_keys ? session->qk_dim() * (options.per_head ? 1 : layout.heads_stored) : 0;
    header.qk_dim = qk_dim;
    const StepMass* prefill = session->prefill_observation();
    header.prefill_window = prefill != nullptr ? session->prefill_window() : 0;
    header.sparse = options.storage == MassStorage::Sparse;
    header.mass_dtype = options.mass_dtype;
    auto request = writer->add_request(header, options.storage);

    for (int64_t t = 0; t < steps; ++t) {
      request->write_query(t, rec.query[static_cast<size_t>(t)]);
      request->write_step(t, rec.mass[static_cast<size_t>(t)]);
    }
    const int64_t chunks = geometry.chunks_for(info.prompt_tokens + steps);
    const FeatureRows features = session->chunk_features();
    request->write_chunk_features(padded(features.data, features.n_rows, features.n_cols, chunks));
    if (qk_dim > 0) {
      const int64_t width = layout.rows() * session->qk_dim();  // one chunk's floats
      auto keys = [&](ChunkKeys which) {
        const RowVectors v = session->chunk_keys(which);
        return padded(v.data, v.items, width, chunks);
      };
      request->write_query_keys(rec.query_vectors, keys(ChunkKeys::Min), keys(ChunkKeys::Max),
                                keys(ChunkKeys::Representative));
    }
    if (prefill != nullptr) request->write_prefill(stored_rows(*prefill, options.per_head));
    request->finish();
    // `info` belongs to the session: read it before the reset frees it.
    summary.prompt_tokens += info.prompt_tokens;
    session.reset();  // stores the output (timings)
    const LiveOutput out = backend.output(i);
    summary.prefill_seconds += out.prefill_seconds;
    summary.decode_seconds += out.decode_seconds;
    ++summary.requests;
  };
  if (options.in_flight <= 1) {
    for (int64_t i = 0; i < backend.requests(); ++i) {
      Recorded r = record(i);
      write(i, r);
    }
  } else {
    record_in_flight(backend.requests(), options.in_flight, options.group, record, write);
  }
  summary.wall_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (summary.requests == 0) {
    throw InputError("record: every request ended at its first token (a stop token); nothing to write to " + path);
  }
  writer->commit();
  return summary;
}

}  // namespace kvlab
