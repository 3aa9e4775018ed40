#include "backends/replay/replay_backend.hpp"

#include <stdexcept>

#include "core/error.hpp"

namespace kvlab {

namespace {

/// One request of a trace. Steps [current, current + horizon] are kept read in a ring buffer,
/// so lookahead(s) costs no I/O and every step is read from the file exactly once.
class ReplaySession final : public RequestSession {
 public:
  ReplaySession(std::unique_ptr<RequestReader> reader, const Geometry& geometry)
      : reader_(std::move(reader)), geometry_(geometry) {
    const RequestHeader& h = reader_->header();
    info_ = RequestInfo{h.id, h.workload, h.prompt_tokens, h.decode_steps, h.seed};
    ring_.resize(1);
  }

  [[nodiscard]] const RequestInfo& info() const override { return info_; }
  [[nodiscard]] int64_t d_query() const override { return reader_->header().d_query; }
  [[nodiscard]] int64_t d_key() const override { return reader_->header().d_key; }

  bool begin_step(int64_t t) override {
    if (t < 0 || (current_ >= 0 && t <= current_)) {
      throw std::logic_error("replay: begin_step(" + std::to_string(t) + ") after step " + std::to_string(current_));
    }
    if (t >= info_.decode_steps) return false;
    current_ = t;
    fill_ring();
    if (d_query() > 0) reader_->read_query(t, query_);
    return true;
  }

  [[nodiscard]] const StepMass* reference() const override { return current_ < 0 ? nullptr : &slot(current_); }
  [[nodiscard]] std::span<const float> query() const override { return query_; }

  [[nodiscard]] FeatureRows chunk_features() const override {
    if (d_key() == 0 || current_ < 0) return {};
    // Read on first use: most policies never look at features, and a 1M-token request's
    // features are megabytes.
    if (features_.empty()) reader_->read_chunk_features(features_);
    const int64_t known = geometry_.chunks_for(info_.prompt_tokens + current_ + 1);
    return {features_.data(), known, d_key()};
  }

  [[nodiscard]] std::vector<int> feature_layers() const override { return reader_->header().feature_layers; }
  [[nodiscard]] int64_t qk_dim() const override { return reader_->header().qk_dim; }
  [[nodiscard]] RowVectors query_vectors() const override {
    if (qk_dim() == 0 || current_ < 0) return {};
    load_query_keys();
    const int rows = layout_rows();
    return {query_vectors_.data() + current_ * rows * qk_dim(), 1, rows, qk_dim()};
  }
  [[nodiscard]] RowVectors chunk_keys(ChunkKeys which) const override {
    if (qk_dim() == 0 || current_ < 0) return {};
    load_query_keys();
    const std::vector<float>& keys = which == ChunkKeys::Min ? key_min_ : which == ChunkKeys::Max ? key_max_ : key_repr_;
    const int64_t known = geometry_.chunks_for(info_.prompt_tokens + current_ + 1);
    return {keys.data(), known, layout_rows(), qk_dim()};
  }
  [[nodiscard]] const StepMass* prefill_observation() const override {
    if (reader_->header().prefill_window == 0) return nullptr;
    if (!prefill_read_) reader_->read_prefill(prefill_);
    prefill_read_ = true;
    return &prefill_;
  }
  [[nodiscard]] int64_t prefill_window() const override { return reader_->header().prefill_window; }

  void set_lookahead(int64_t steps) override {
    if (steps < 0) throw std::logic_error("replay: negative lookahead");
    if (steps == horizon_) return;
    horizon_ = steps;
    // Rebuild the ring; steps already read are read again (this happens once per session).
    ring_.assign(static_cast<size_t>(horizon_ + 1), StepMass{});
    read_until_ = current_;
    if (current_ >= 0) {
      read_until_ = current_ - 1;
      fill_ring();
    }
  }

  /// Mass of step s for current <= s <= current + horizon (and s < decode_steps); else null.
  [[nodiscard]] const StepMass* lookahead(int64_t step) const override {
    if (current_ < 0 || step < current_ || step > current_ + horizon_ || step > read_until_) return nullptr;
    return &slot(step);
  }

 private:
  [[nodiscard]] const StepMass& slot(int64_t s) const { return ring_[static_cast<size_t>(s % (horizon_ + 1))]; }
  StepMass& slot(int64_t s) { return ring_[static_cast<size_t>(s % (horizon_ + 1))]; }

  // Reads the steps in (read_until_, min(current + horizon, last)] into their ring slots.
  void fill_ring() {
    const int64_t last = std::min(current_ + horizon_, info_.decode_steps - 1);
    int64_t s = std::max(read_until_ + 1, current_);
    for (; s <= last; ++s) reader_->read_step(s, slot(s));
    read_until_ = std::max(read_until_, last);
  }

  [[nodiscard]] int layout_rows() const { return geometry_.n_layers * reader_->header().heads_stored; }
  // Read on first use: whole arrays (query/key vectors are small per row, but not every policy reads them).
  void load_query_keys() const {
    if (query_vectors_.empty()) reader_->read_query_keys(query_vectors_, key_min_, key_max_, key_repr_);
  }

  std::unique_ptr<RequestReader> reader_;
  Geometry geometry_;
  RequestInfo info_;
  std::vector<StepMass> ring_;
  int64_t horizon_ = 0;
  int64_t current_ = -1;
  int64_t read_until_ = -1;  // last step read into the ring
  std::vector<float> query_;
  mutable std::vector<float> features_;  // filled on first chunk_features()
  mutable std::vector<float> query_vectors_, key_min_, key_max_, key_repr_;
  mutable StepMass prefill_;
  mutable bool prefill_read_ = false;
};

}  // namespace

ReplayBackend::ReplayBackend(const std::string& trace_path) : ReplayBackend(TraceReader::open(trace_path)) {}

ReplayBackend::ReplayBackend(std::unique_ptr<TraceReader> reader) : reader_(std::move(reader)) {
  const std::string& trace_path = reader_->path();
  for (int64_t i = 0; i < reader_->request_count(); ++i) headers_.push_back(reader_->request(i)->header());
  layout_ = RowLayout{reader_->geometry().n_layers, headers_.empty() ? 1 : headers_.front().heads_stored};
  for (const RequestHeader& h : headers_) {
    if (h.heads_stored != layout_.heads_stored) {
      throw InputError(trace_path + ": request " + h.id + " stores " + std::to_string(h.heads_stored) +
                       " heads but request " + headers_.front().id + " stores " +
                       std::to_string(layout_.heads_stored) + "; replay needs one row layout per trace");
    }
  }
}

std::unique_ptr<RequestSession> ReplayBackend::open(int64_t index) {
  return std::make_unique<ReplaySession>(reader_->request(index), reader_->geometry());
}

}  // namespace kvlab
