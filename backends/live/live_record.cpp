#include "backends/live/live_record.hpp"

#include <algorithm>

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

}  // namespace

RecordSummary record_trace(LiveBackend& backend, const std::string& path, const RecordOptions& options) {
  if (backend.options().stop_at_eos) {
    throw UsageError("record: the live backend must run fixed-length requests (stop_at_eos off)");
  }
  const Geometry& geometry = backend.geometry();
  const RowLayout layout = backend.rows();
  auto writer = TraceWriter::create(path, geometry);
  RecordSummary summary;
  int64_t total = 0;
  for (int64_t i = 0; i < backend.requests(); ++i) total += backend.request(i).info.decode_steps;

  StepMass aggregated;
  for (int64_t i = 0; i < backend.requests(); ++i) {
    auto session = backend.open(i);
    const RequestInfo& info = session->info();
    RequestHeader header;
    header.id = info.id;
    header.prompt_tokens = info.prompt_tokens;
    header.decode_steps = info.decode_steps;
    header.workload = info.workload;
    header.seed = info.seed;
    header.heads_stored = options.per_head ? layout.heads_stored : 1;
    header.d_query = session->d_query();
    header.d_key = session->d_key();
    header.sparse = options.storage == MassStorage::Sparse;
    header.mass_dtype = options.mass_dtype;
    auto request = writer->add_request(header, options.storage);

    for (int64_t t = 0; t < info.decode_steps; ++t) {
      if (!session->begin_step(t)) {
        throw InputError("record: request " + info.id + " ended at step " + std::to_string(t) + " of " +
                         std::to_string(info.decode_steps));
      }
      request->write_query(t, session->query());
      Residency all(layout, geometry.chunks_for(info.prompt_tokens + t + 1));
      all.set_all();
      StepIO io;
      io.step = t;
      io.n_tokens = info.prompt_tokens + t + 1;
      io.resident = &all;  // all resident, no tiers: this is full attention
      session->launch(t, io);
      const StepMass* mass = session->finish(t, io);
      if (options.per_head) {
        request->write_step(t, *mass);
      } else {
        aggregate_heads(*mass, aggregated);
        request->write_step(t, aggregated);
      }
      ++summary.steps;
      if (options.progress) options.progress(summary.steps, total);
    }
    const FeatureRows features = session->chunk_features();
    const int64_t rows = geometry.chunks_for(info.prompt_tokens + info.decode_steps);
    std::vector<float> matrix(static_cast<size_t>(rows * features.n_cols), 0.0F);
    std::copy(features.data, features.data + std::min(rows, features.n_rows) * features.n_cols, matrix.begin());
    request->write_chunk_features(matrix);
    request->finish();
    // `info` belongs to the session: read it before the reset frees it.
    summary.prompt_tokens += info.prompt_tokens;
    session.reset();  // stores the output (timings)
    const LiveOutput out = backend.output(i);
    summary.prefill_seconds += out.prefill_seconds;
    summary.decode_seconds += out.decode_seconds;
    ++summary.requests;
  }
  writer->commit();
  return summary;
}

}  // namespace kvlab
