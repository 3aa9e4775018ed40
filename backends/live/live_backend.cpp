#include "backends/live/live_backend.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <random>

#include "backends/live/residency_view.hpp"
#include "core/error.hpp"

namespace kvlab {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

int32_t argmax(std::span<const float> v) {
  return static_cast<int32_t>(std::max_element(v.begin(), v.end()) - v.begin());
}

/// A uniform double in [0, 1) from the top 53 bits: the same on every standard library.
double uniform01(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

/// Samples from softmax(logits / temperature).
int32_t sample(std::span<const float> logits, double temperature, std::mt19937_64& rng) {
  const double m = *std::max_element(logits.begin(), logits.end());
  std::vector<double> p(logits.size());
  double z = 0;
  for (size_t i = 0; i < logits.size(); ++i) {
    p[i] = std::exp((logits[i] - m) / temperature);
    z += p[i];
  }
  double u = uniform01(rng) * z;
  for (size_t i = 0; i < p.size(); ++i) {
    u -= p[i];
    if (u < 0) return static_cast<int32_t>(i);
  }
  return argmax(logits);  // rounding left u at the end: take the likeliest
}

std::vector<float> log_softmax(std::span<const float> logits) {
  const double m = *std::max_element(logits.begin(), logits.end());
  double z = 0;
  for (float l : logits) z += std::exp(static_cast<double>(l) - m);
  const double lz = m + std::log(z);
  std::vector<float> out(logits.size());
  for (size_t i = 0; i < logits.size(); ++i) out[i] = static_cast<float>(logits[i] - lz);
  return out;
}

Geometry geometry_of(const DecoderShape& s) {
  Geometry g = Geometry::preset("smollm2-135m");
  if (s.n_layers != g.n_layers || s.n_kv_heads != g.n_kv_heads || s.head_dim != g.head_dim) {
    g.model = s.model.empty() ? "llama" : s.model;
  }
  g.n_layers = s.n_layers;
  g.n_kv_heads = s.n_kv_heads;
  g.head_dim = s.head_dim;
  g.kv_dtype_bytes = 2;  // bf16 accounting, as a GPU serving stack would store it
  g.chunk_tokens = s.chunk_tokens;
  return g;
}

/// Copies a decoder's [rows × chunks] report into dense StepMass rows.
void fill_mass(const DecodeOutput& d, bool full, RowLayout layout, bool renormalise, StepMass& out) {
  out.reset_dense(layout, d.n_chunks);
  for (int r = 0; r < layout.rows(); ++r) {
    const std::span<const float> src = full ? d.full_mass_row(r) : d.chunk_mass_row(r);
    std::span<float> row = out.dense_row(r);
    double sum = 0;
    for (size_t c = 0; c < src.size(); ++c) {
      row[c] = src[c];
      sum += src[c];
    }
    if (renormalise && sum > 0) {
      for (float& v : row) v = static_cast<float>(v / sum);
    }
  }
}

/// What step t's attention reads, known at launch: the resident set and, with measured
/// arrival, every chunk in flight (a synchronous session reports them all as landed before
/// the step's attention, RequestSession::report_arrivals).
Residency attended_at_launch(const StepIO& io) {
  Residency attended = *io.resident;
  if (io.arrival != ArrivalMode::Measured || io.in_flight == nullptr) return attended;
  const Residency& flight = *io.in_flight;
  if (flight.uniform() && attended.uniform()) {
    ChunkMask& mask = attended.make_uniform();
    flight.row(0).for_each([&](int64_t c) { mask.set(c); });
    return attended;
  }
  for (int r = 0; r < attended.rows(); ++r) {
    flight.row(r).for_each([&](int64_t c) { attended.mutable_row(r).set(c); });
  }
  return attended;
}

/// Request i's prompt after prefill: the decoder holding its cache, and the prefill's result.
struct LivePrefill final : PrefilledRequest {
  int64_t index = 0;
  std::unique_ptr<const Decoder> decoder;
  DecodeOutput result;
  double seconds = 0;
  double device_seconds = -1;  // the decoder's own timing of the prefill (< 0: not timed)
};

}  // namespace

// ---- session --------------------------------------------------------------------------

class LiveSession final : public RequestSession {
 public:
  LiveSession(LiveBackend& backend, int64_t index, const LivePrefill& prefill)
      : backend_(backend), index_(index), info_(backend.request(index).info) {
    const LiveOptions& o = backend_.options_;
    forced_ = backend_.forced_[static_cast<size_t>(index)];
    forced_steps_ = backend_.forced_steps_[static_cast<size_t>(index)];
    rng_.seed(o.sampling_seed * 0x9E3779B97F4A7C15ULL + info_.seed + static_cast<uint64_t>(index));
    decoder_ = prefill.decoder->fork();  // shares the prompt's chunks
    out_.prefill_seconds = prefill.seconds;
    out_.prefill_device_seconds = prefill.device_seconds;
    query_ = prefill.result.query_features;
    query_vectors_ = prefill.result.query_vectors;
    if (prefill.result.prefill_window > 0) {
      const RowLayout layout = backend_.rows();
      prefill_window_ = prefill.result.prefill_window;
      prefill_observation_.reset_dense(layout, prefill.result.n_chunks);
      for (int r = 0; r < layout.rows(); ++r) {
        std::span<float> row = prefill_observation_.dense_row(r);
        std::copy_n(prefill.result.prefill_mass.begin() + static_cast<ptrdiff_t>(r) * prefill.result.n_chunks,
                    prefill.result.n_chunks, row.begin());
      }
    }
    out_.tokens.push_back(forced_.empty() ? choose(prefill.result.logits) : forced_[0]);
  }

  ~LiveSession() override {
    decoder_.reset();  // first: a step still queued is withdrawn before what it reads goes
    backend_.store_output(index_, std::move(out_));
  }

  [[nodiscard]] const RequestInfo& info() const override { return info_; }
  [[nodiscard]] int64_t d_query() const override {  // a hidden state per feature layer
    return static_cast<int64_t>(backend_.shape_.hidden) *
           static_cast<int64_t>(std::max<size_t>(backend_.shape_.feature_layers.size(), 1));
  }
  [[nodiscard]] int64_t d_key() const override { return backend_.shape_.chunk_feature_size; }
  [[nodiscard]] std::vector<int> feature_layers() const override { return backend_.shape_.feature_layers; }

  bool begin_step(int64_t t) override {
    if (t != out_.steps) {
      throw InputError("live backend: request " + info_.id + ": step " + std::to_string(t) +
                       " requested after " + std::to_string(out_.steps) + " steps (steps come in order)");
    }
    if (!forced_.empty()) return t < forced_steps_;
    if (t >= info_.decode_steps) return false;
    return !(backend_.options_.stop_at_eos && backend_.is_stop(out_.tokens.back()));
  }

  [[nodiscard]] const StepMass* reference() const override { return has_reference_ ? &reference_ : nullptr; }
  [[nodiscard]] std::span<const float> query() const override { return query_; }

  [[nodiscard]] FeatureRows chunk_features() const override {
    const int64_t complete = decoder_->n_complete_chunks();
    const int64_t d = backend_.shape_.chunk_feature_size;
    if (complete > features_rows_) {
      features_.resize(static_cast<size_t>(complete * d));
      for (int64_t c = features_rows_; c < complete; ++c) {
        decoder_->chunk_features(c, std::span<float>(features_).subspan(static_cast<size_t>(c * d), static_cast<size_t>(d)));
      }
      features_rows_ = complete;
    }
    return FeatureRows{features_.data(), features_rows_, d};
  }

  [[nodiscard]] int64_t qk_dim() const override { return backend_.shape_.qk_dim; }
  /// The latest processed token's queries, like query(): the current token's depend on the plan.
  [[nodiscard]] RowVectors query_vectors() const override {
    if (qk_dim() == 0) return {};
    return {query_vectors_.data(), 1, backend_.rows().rows(), qk_dim()};
  }
  [[nodiscard]] RowVectors chunk_keys(ChunkKeys which) const override {
    if (qk_dim() == 0) return {};
    const int64_t complete = decoder_->n_complete_chunks();
    const int64_t per_chunk = backend_.rows().rows() * qk_dim();
    if (complete > key_rows_) {
      for (std::vector<float>* v : {&key_min_, &key_max_, &key_repr_}) v->resize(static_cast<size_t>(complete * per_chunk));
      for (int64_t c = key_rows_; c < complete; ++c) {
        const auto at = [&](std::vector<float>& v) {
          return std::span<float>(v).subspan(static_cast<size_t>(c * per_chunk), static_cast<size_t>(per_chunk));
        };
        decoder_->chunk_keys(c, at(key_min_), at(key_max_), at(key_repr_));
      }
      key_rows_ = complete;
    }
    const std::vector<float>& keys = which == ChunkKeys::Min ? key_min_ : which == ChunkKeys::Max ? key_max_ : key_repr_;
    return {keys.data(), key_rows_, backend_.rows().rows(), qk_dim()};
  }
  [[nodiscard]] const StepMass* prefill_observation() const override {
    return prefill_window_ > 0 ? &prefill_observation_ : nullptr;
  }
  [[nodiscard]] int64_t prefill_window() const override { return prefill_window_; }

  [[nodiscard]] bool closed_loop() const override { return true; }

  /// A batching decoder gets the step now, so that it runs with every other step launched
  /// before the finishes; the residency it reads is copied (the ledger moves on before finish).
  void launch(int64_t t, const StepIO& io) override {
    if (!decoder_->batches_steps()) return;
    if (t != out_.steps) {
      throw InputError("live backend: request " + info_.id + ": launch(" + std::to_string(t) + ") out of order");
    }
    launch_time_ = Clock::now();
    launched_residency_ = attended_at_launch(io);
    launched_rows_ = std::make_unique<ResidencyRows>(launched_residency_, backend_.shape_.n_layers,
                                                     backend_.shape_.n_kv_heads);
    launched_request_ = step_request(launched_rows_->view(), io.tiers.summary_ratio);
    decoder_->submit(out_.tokens[static_cast<size_t>(t)], launched_request_);
    launched_ = true;
  }

  const StepMass* finish(int64_t t, const StepIO& io) override {
    if (t != out_.steps) {
      throw InputError("live backend: request " + info_.id + ": finish(" + std::to_string(t) + ") out of order");
    }
    const LiveOptions& o = backend_.options_;
    const DecoderShape& shape = backend_.shape_;
    StepRequest request;
    if (launched_) {
      launched_ = false;
      request = launched_request_;
      decoder_->collect(result_);
      out_.decode_seconds += seconds_since(launch_time_);
    } else {
      const ResidencyRows rows(*io.resident, shape.n_layers, shape.n_kv_heads);
      request = step_request(rows.view(), io.tiers.summary_ratio);
      const auto t0 = Clock::now();
      decoder_->step(out_.tokens[static_cast<size_t>(t)], request, result_);
      out_.decode_seconds += seconds_since(t0);
    }
    add_timing(result_);

    const RowLayout layout = backend_.rows();
    fill_mass(result_, /*full=*/false, layout, /*renormalise=*/request.include_summaries, observed_);
    has_reference_ = o.reference_mass;
    if (has_reference_) fill_mass(result_, /*full=*/true, layout, false, reference_);
    if (o.keep_log_probs) out_.log_probs.push_back(log_softmax(result_.logits));
    query_ = result_.query_features;
    query_vectors_ = result_.query_vectors;
    ++out_.steps;
    const auto next = static_cast<size_t>(t + 1);
    out_.tokens.push_back(!forced_.empty() && next < forced_.size() ? forced_[next] : choose(result_.logits));
    return &observed_;
  }

  [[nodiscard]] const LiveOutput& output() const { return out_; }

 private:
  /// The decoder's request for a step over `residency` with the plan's summary tier.
  StepRequest step_request(ResidencyView residency, int summary_ratio) {
    const DecoderShape& shape = backend_.shape_;
    if (summary_ratio < 0 || summary_ratio % shape.chunk_tokens != 0) {
      throw UsageError("live backend: the plan's summary_ratio " + std::to_string(summary_ratio) +
                       " must be 0 (off) or a positive multiple of chunk_tokens " + std::to_string(shape.chunk_tokens));
    }
    StepRequest request;
    request.residency = residency;
    request.include_summaries = summary_ratio > 0;
    request.summary_ratio = summary_ratio > 0 ? summary_ratio : 128;
    request.full_reference_mass = backend_.options_.reference_mass;
    out_.summary_ratio = std::max(out_.summary_ratio, summary_ratio);
    return request;
  }

  /// Device time of the step's pass, shared evenly by the sequences the pass served.
  void add_timing(const DecodeOutput& step) {
    if (step.pass_ms < 0) return;
    const double share = 1e-3 / std::max(step.batch, 1);
    out_.timed_steps += 1;
    out_.attention_seconds += step.attention_ms * share;
    out_.pass_seconds += step.pass_ms * share;
    out_.stall_seconds += step.stall_ms * share;
    out_.batch_sum += step.batch;
  }

  int32_t choose(std::span<const float> logits) {
    const double temperature = backend_.options_.temperature;
    return temperature > 0 ? sample(logits, temperature, rng_) : argmax(logits);
  }

  LiveBackend& backend_;
  int64_t index_;
  RequestInfo info_;
  std::unique_ptr<Decoder> decoder_;
  DecodeOutput result_;
  std::vector<int32_t> forced_;
  int64_t forced_steps_ = 0;
  std::mt19937_64 rng_;
  std::vector<float> query_;
  std::vector<float> query_vectors_;  // [rows × qk_dim]
  StepMass prefill_observation_;
  int64_t prefill_window_ = 0;
  StepMass observed_;
  StepMass reference_;
  bool has_reference_ = false;
  mutable std::vector<float> features_;
  mutable int64_t features_rows_ = 0;
  mutable std::vector<float> key_min_, key_max_, key_repr_;  // [complete chunks × rows × qk_dim]
  mutable int64_t key_rows_ = 0;
  LiveOutput out_;
  // A step submitted at launch (batching decoders) and what it reads until finish.
  bool launched_ = false;
  Clock::time_point launch_time_;
  Residency launched_residency_;
  std::unique_ptr<ResidencyRows> launched_rows_;
  StepRequest launched_request_;
};

// ---- backend --------------------------------------------------------------------------

LiveBackend::LiveBackend(DecoderFactory make_decoder, std::vector<int32_t> stop_tokens,
                         std::vector<LiveRequest> requests, LiveOptions options)
    : make_decoder_(std::move(make_decoder)),
      stop_tokens_(std::move(stop_tokens)),
      requests_(std::move(requests)),
      options_(options) {
  if (!make_decoder_) throw InputError("live backend: no decoder given");
  if (!(options_.temperature >= 0) || !std::isfinite(options_.temperature)) {
    throw UsageError("live backend: temperature must be a finite number >= 0");
  }
  const std::unique_ptr<Decoder> probe = make_decoder_();  // validates weights and options
  shape_ = probe->shape();
  batches_ = probe->batches_steps();
  geometry_ = geometry_of(shape_);
  for (LiveRequest& r : requests_) {
    if (r.prompt.empty()) throw InputError("live backend: request " + r.info.id + ": the prompt is empty");
    if (r.info.decode_steps < 0) throw UsageError("live backend: request " + r.info.id + ": negative decode steps");
    r.info.prompt_tokens = static_cast<int64_t>(r.prompt.size());
    const int64_t needed = r.info.prompt_tokens + r.info.decode_steps;
    if (needed > probe->max_context()) {
      throw InputError("live backend: request " + r.info.id + ": " + std::to_string(r.info.prompt_tokens) +
                       " prompt tokens plus " + std::to_string(r.info.decode_steps) + " decode steps need " +
                       std::to_string(needed) + " positions, beyond the model's usable context of " +
                       std::to_string(probe->max_context()) + " (rope scaling extends it)");
    }
  }
  forced_.resize(requests_.size());
  forced_steps_.assign(requests_.size(), 0);
  outputs_.resize(requests_.size());
}

const LiveRequest& LiveBackend::request(int64_t index) const {
  if (index < 0 || index >= requests()) {
    throw UsageError("live backend: request index " + std::to_string(index) + " out of range");
  }
  return requests_[static_cast<size_t>(index)];
}

std::string LiveBackend::describe() const {
  return "live:" + shape_.device + ":" + (shape_.model.empty() ? std::string("llama") : shape_.model);
}

void LiveBackend::set_forced_tokens(int64_t index, std::vector<int32_t> tokens, int64_t steps) {
  (void)request(index);
  if (steps < 0 || static_cast<int64_t>(tokens.size()) <= steps) {
    throw UsageError("live backend: forced tokens need more tokens (" + std::to_string(tokens.size()) +
                     ") than steps (" + std::to_string(steps) + ")");
  }
  forced_[static_cast<size_t>(index)] = std::move(tokens);
  forced_steps_[static_cast<size_t>(index)] = steps;
}

void LiveBackend::clear_forced() {
  for (auto& f : forced_) f.clear();
  std::fill(forced_steps_.begin(), forced_steps_.end(), 0);
}

void LiveBackend::clear_forced(int64_t index) {
  (void)request(index);
  forced_[static_cast<size_t>(index)].clear();
  forced_steps_[static_cast<size_t>(index)] = 0;
}

LiveOutput LiveBackend::output(int64_t index) const {
  (void)request(index);
  const std::lock_guard<std::mutex> lock(mutex_);
  return outputs_[static_cast<size_t>(index)];
}

void LiveBackend::store_output(int64_t index, LiveOutput out) {
  const std::lock_guard<std::mutex> lock(mutex_);
  outputs_[static_cast<size_t>(index)] = std::move(out);
}

bool LiveBackend::is_stop(int32_t token) const {
  return std::find(stop_tokens_.begin(), stop_tokens_.end(), token) != stop_tokens_.end();
}

std::shared_ptr<const PrefilledRequest> LiveBackend::prefill(int64_t index) {
  auto p = std::make_shared<LivePrefill>();
  p->index = index;
  std::unique_ptr<Decoder> decoder = make_decoder_();
  const auto t0 = Clock::now();
  decoder->prefill(request(index).prompt, p->result);
  p->seconds = seconds_since(t0);
  p->device_seconds = p->result.pass_ms >= 0 ? p->result.pass_ms * 1e-3 : -1.0;
  p->decoder = std::move(decoder);
  return p;
}

std::unique_ptr<RequestSession> LiveBackend::open(int64_t index) { return open(index, prefill(index)); }

std::unique_ptr<RequestSession> LiveBackend::open(int64_t index, std::shared_ptr<const PrefilledRequest> prefilled) {
  (void)request(index);
  const auto* p = dynamic_cast<const LivePrefill*>(prefilled.get());
  if (p == nullptr || p->index != index) {
    throw UsageError("live backend: request " + std::to_string(index) + " opened from another request's prefill");
  }
  return std::make_unique<LiveSession>(*this, index, *p);
}

const LiveOutput& LiveBackend::output_of(const RequestSession& session) {
  const auto* live = dynamic_cast<const LiveSession*>(&session);
  if (live == nullptr) throw UsageError("live backend: output_of a session it did not open");
  return live->output();
}

}  // namespace kvlab
