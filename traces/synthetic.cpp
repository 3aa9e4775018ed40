#include "traces/synthetic_detail.hpp"

#include <algorithm>
#include <cstdio>

#include "core/error.hpp"
#include "core/synthetic_qk.hpp"

namespace kvlab {

using namespace synthetic_detail;

// ---- the per-request generator ------------------------------------------------------------

SyntheticRequestGenerator::SyntheticRequestGenerator(const SyntheticConfig& config, int request_index)
    : impl_(std::make_unique<Impl>()) {
  config.validate();
  if (request_index < 0) throw UsageError("synthetic trace: request index must be >= 0");
  Impl& m = *impl_;
  m.config = config;
  m.geometry = config.resolved_geometry();
  m.model = build_model(config, m.geometry);
  m.request_seed = derive(config.seed, 100, static_cast<uint64_t>(request_index));
  m.workload = config.workload == Workload::Mix ? mix_workload_for(config.seed, request_index) : config.workload;

  char id[32];
  std::snprintf(id, sizeof(id), "r%06d", request_index);
  RequestHeader& h = m.header;
  h.id = id;
  h.prompt_tokens = config.context_tokens;
  h.decode_steps = config.steps;
  h.workload = config.workload == Workload::Mix ? "mix/" + std::string(workload_name(m.workload))
                                                 : std::string(workload_name(m.workload));
  h.seed = m.request_seed;
  h.heads_stored = config.heads_stored;
  h.n_chunks_max = m.geometry.chunks_for(config.context_tokens + config.steps);
  h.d_query = config.features ? config.d_query : 0;
  h.d_key = config.features ? config.d_key : 0;
  m.storage = config.storage;
  if (m.storage == MassStorage::Auto) {
    m.storage = h.n_chunks_max <= kSyntheticDenseMaxChunks ? MassStorage::Dense : MassStorage::Sparse;
  }
  h.sparse = m.storage == MassStorage::Sparse;
  h.mass_dtype = config.mass_dtype;

  TraceRng rng(derive(m.request_seed, 1));
  m.place_sets(rng);
  const int64_t pool = std::clamp<int64_t>(h.n_chunks_max / 64, 8, 512);
  for (int64_t i = 0; i < pool && h.n_chunks_max > 1; ++i) {
    m.salient.push_back(static_cast<uint32_t>(rng.modulo_between(1, h.n_chunks_max - 1)));
  }
  m.build_features();
}

SyntheticRequestGenerator::~SyntheticRequestGenerator() = default;
SyntheticRequestGenerator::SyntheticRequestGenerator(SyntheticRequestGenerator&&) noexcept = default;
SyntheticRequestGenerator& SyntheticRequestGenerator::operator=(SyntheticRequestGenerator&&) noexcept = default;

const RequestHeader& SyntheticRequestGenerator::header() const { return impl_->header; }
const Geometry& SyntheticRequestGenerator::geometry() const { return impl_->geometry; }
MassStorage SyntheticRequestGenerator::storage() const { return impl_->storage; }
const std::vector<RemoteSet>& SyntheticRequestGenerator::remote_sets() const { return impl_->sets; }
const std::vector<float>& SyntheticRequestGenerator::chunk_features() const { return impl_->features; }

SyntheticRequest generate_request(const SyntheticConfig& config, int request_index) {
  const SyntheticRequestGenerator gen(config, request_index);
  SyntheticRequest r;
  r.header = gen.header();
  r.remote_sets = gen.remote_sets();
  if (config.features) r.chunk_features = gen.chunk_features();
  r.mass.resize(static_cast<size_t>(config.steps));
  r.query.resize(static_cast<size_t>(config.steps));
  for (int64_t t = 0; t < config.steps; ++t) {
    gen.step_mass(t, r.mass[static_cast<size_t>(t)]);
    if (config.features) gen.query(t, r.query[static_cast<size_t>(t)]);
  }
  return r;
}

void generate_trace(const SyntheticConfig& config, const std::string& out_path) {
  config.validate();
  auto writer = TraceWriter::create(out_path, config.resolved_geometry());
  StepMass mass;
  std::vector<float> q;
  const Geometry g = config.resolved_geometry();
  for (int i = 0; i < config.requests; ++i) {
    const SyntheticRequestGenerator gen(config, i);
    RequestHeader header = gen.header();
    header.qk_dim = config.qk_dim;
    header.prefill_window = config.prefill_window;
    auto req = writer->add_request(header, config.storage);
    if (config.features) req->write_chunk_features(gen.chunk_features());
    const uint64_t qk_seed = derive(config.seed, 0x51CBULL, static_cast<uint64_t>(i));
    const int rows = g.n_layers * config.heads_stored;
    SyntheticKeys keys;
    if (config.qk_dim > 0) keys = synthetic_chunk_keys(qk_seed, rows, header.n_chunks_max, config.qk_dim);
    std::vector<float> query_vectors;
    std::vector<float> step_query;
    for (int64_t t = 0; t < config.steps; ++t) {
      gen.step_mass(t, mass);
      req->write_step(t, mass);
      if (t == 0 && config.prefill_window > 0) {
        StepMass prefill;
        synthetic_prefill_observation(mass, g.chunks_for(header.prompt_tokens), qk_seed, prefill);
        req->write_prefill(prefill);
      }
      if (config.qk_dim > 0) {
        synthetic_query(keys, mass, qk_seed, t, step_query);
        query_vectors.insert(query_vectors.end(), step_query.begin(), step_query.end());
      }
      if (!config.features) continue;
      gen.query(t, q);
      req->write_query(t, q);
    }
    if (config.qk_dim > 0) req->write_query_keys(query_vectors, keys.min, keys.max, keys.repr);
    req->finish();
  }
  writer->commit();
}

}  // namespace kvlab
