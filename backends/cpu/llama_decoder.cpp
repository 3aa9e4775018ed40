#include "backends/cpu/llama_decoder.hpp"

#include <algorithm>
#include <cmath>
#include <exception>
#include <initializer_list>
#include <limits>
#include <string>

#include <Eigen/Dense>

#include "backends/attention/sparse_decode_reference.hpp"
#include "core/error.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace kvlab {

namespace {

using VecMap = Eigen::Map<Eigen::VectorXf>;
using ConstVecMap = Eigen::Map<const Eigen::VectorXf>;
using ConstRowMap = Eigen::Map<const RowMatrix>;
using RowMap = Eigen::Map<RowMatrix>;

int default_thread_count() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

/// One product of a fused matvec: y = W x.
struct MatVec {
  const RowMatrix* w;
  float* y;
};

/// y_i = W_i x for several row-major W_i sharing x, split by output rows across threads in
/// one parallel region. Eigen does not thread matrix-vector products, a decode step is
/// nothing but those, and fusing Q/K/V (gate/up) halves the fork-join count.
void matvec(std::initializer_list<MatVec> products, const float* x, int threads) {
  constexpr int64_t kBlock = 64;
  struct Block {
    const RowMatrix* w;
    float* y;
    int64_t r0;
  };
  std::vector<Block> blocks;
  int64_t work = 0;
  for (const MatVec& p : products) {
    work += p.w->size();
    for (int64_t r0 = 0; r0 < p.w->rows(); r0 += kBlock) blocks.push_back({p.w, p.y, r0});
  }
  const auto n_blocks = static_cast<int64_t>(blocks.size());
  // Below ~64K multiply-adds a fork-join costs more than it saves.
#pragma omp parallel for schedule(static) num_threads(threads) if (work > (1 << 16))
  for (int64_t b = 0; b < n_blocks; ++b) {
    const Block& blk = blocks[static_cast<size_t>(b)];
    const int64_t nr = std::min(kBlock, blk.w->rows() - blk.r0);
    VecMap(blk.y + blk.r0, nr).noalias() =
        blk.w->middleRows(blk.r0, nr) * ConstVecMap(x, blk.w->cols());
  }
}

void matvec(const RowMatrix& w, const float* x, float* y, int threads) {
  matvec({MatVec{&w, y}}, x, threads);
}

/// out = x / rms(x) ⊙ weight, row by row.
void rms_norm_rows(const RowMatrix& x, const Eigen::VectorXf& weight, double eps, RowMatrix& out,
                   int threads) {
  out.resize(x.rows(), x.cols());
#pragma omp parallel for schedule(static) num_threads(threads) if (x.rows() > 16)
  for (Eigen::Index r = 0; r < x.rows(); ++r) {
    const double ms = static_cast<double>(x.row(r).squaredNorm()) / static_cast<double>(x.cols());
    const auto inv = static_cast<float>(1.0 / std::sqrt(ms + eps));
    out.row(r) = (x.row(r).array() * inv) * weight.transpose().array();
  }
}

void rms_norm(const float* x, const Eigen::VectorXf& weight, double eps, float* out) {
  const Eigen::Index n = weight.size();
  ConstVecMap xv(x, n);
  const double ms = static_cast<double>(xv.squaredNorm()) / static_cast<double>(n);
  const auto inv = static_cast<float>(1.0 / std::sqrt(ms + eps));
  VecMap(out, n) = (xv.array() * inv) * weight.array();
}

/// In-place SwiGLU: gate ← silu(gate) ⊙ up.
template <class A, class B>
void swiglu(A& gate, const B& up) {
  gate = (gate.array() / (1.0F + (-gate.array()).exp())) * up.array();
}

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

[[noreturn]] void fail(const std::string& what) { throw InputError("cpu decoder: " + what); }

void check_positive(const char* field, int64_t value) {
  if (value <= 0) fail(std::string(field) + " must be positive, got " + std::to_string(value));
}

void check_shape(const std::string& name, Eigen::Index rows, Eigen::Index cols, int64_t want_rows,
                 int64_t want_cols) {
  if (rows != want_rows || cols != want_cols) {
    fail("tensor " + name + " has shape [" + std::to_string(rows) + " x " + std::to_string(cols) +
         "], expected [" + std::to_string(want_rows) + " x " + std::to_string(want_cols) + "]");
  }
}

/// The loader checks the GGUF; this checks what the decoder relies on, for weights built by
/// any other means (tests, future loaders).
void check_weights(const LlamaWeights& w) {
  const LlamaConfig& c = w.config;
  check_positive("n_layers", c.n_layers);
  check_positive("hidden", c.hidden);
  check_positive("n_heads", c.n_heads);
  check_positive("n_kv_heads", c.n_kv_heads);
  check_positive("head_dim", c.head_dim);
  check_positive("ffn", c.ffn);
  check_positive("vocab", c.vocab);
  if (c.n_heads % c.n_kv_heads != 0) {
    fail("n_heads (" + std::to_string(c.n_heads) + ") must be a multiple of n_kv_heads (" +
         std::to_string(c.n_kv_heads) + ")");
  }
  if (c.head_dim % 2 != 0) fail("head_dim must be even for RoPE, got " + std::to_string(c.head_dim));
  if (!(c.rms_eps > 0.0F)) fail("rms_eps must be positive");
  if (!(c.rope_base > 1.0F)) fail("rope_base must be greater than 1");
  const int64_t q_dim = static_cast<int64_t>(c.n_heads) * c.head_dim;
  const int64_t kv_dim = static_cast<int64_t>(c.n_kv_heads) * c.head_dim;
  check_shape("token_embd", w.token_embd.rows(), w.token_embd.cols(), c.vocab, c.hidden);
  check_shape("output_norm", w.output_norm.rows(), 1, c.hidden, 1);
  const RowMatrix& head = w.output_matrix();
  check_shape(w.tied_embeddings ? "token_embd (tied output)" : "output", head.rows(), head.cols(),
              c.vocab, c.hidden);
  if (static_cast<int64_t>(w.layers.size()) != c.n_layers) {
    fail("weights have " + std::to_string(w.layers.size()) + " layers, config says " +
         std::to_string(c.n_layers));
  }
  for (size_t i = 0; i < w.layers.size(); ++i) {
    const LlamaLayerWeights& l = w.layers[i];
    const std::string p = "blk." + std::to_string(i) + ".";
    check_shape(p + "attn_norm", l.attn_norm.rows(), 1, c.hidden, 1);
    check_shape(p + "attn_q", l.wq.rows(), l.wq.cols(), q_dim, c.hidden);
    check_shape(p + "attn_k", l.wk.rows(), l.wk.cols(), kv_dim, c.hidden);
    check_shape(p + "attn_v", l.wv.rows(), l.wv.cols(), kv_dim, c.hidden);
    check_shape(p + "attn_output", l.wo.rows(), l.wo.cols(), c.hidden, q_dim);
    check_shape(p + "ffn_norm", l.ffn_norm.rows(), 1, c.hidden, 1);
    check_shape(p + "ffn_gate", l.w_gate.rows(), l.w_gate.cols(), c.ffn, c.hidden);
    check_shape(p + "ffn_up", l.w_up.rows(), l.w_up.cols(), c.ffn, c.hidden);
    check_shape(p + "ffn_down", l.w_down.rows(), l.w_down.cols(), c.hidden, c.ffn);
  }
}

}  // namespace

// ---- construction ---------------------------------------------------------------------

LlamaDecoder::LlamaDecoder(std::shared_ptr<const LlamaWeights> weights, DecoderOptions options)
    : weights_(std::move(weights)),
      options_(options),
      cache_([&] {
        if (!weights_) throw InputError("cpu decoder: no weights given");
        check_weights(*weights_);
        const LlamaConfig& c = weights_->config;
        return KvCacheShape{c.n_layers, c.n_kv_heads, c.head_dim, options.chunk_tokens};
      }()) {
  const LlamaConfig& c = config();
  if (options_.prefill_block <= 0) {
    throw UsageError("cpu decoder: prefill_block must be positive, got " +
                     std::to_string(options_.prefill_block));
  }
  feature_layers_.push_back(options_.feature_layer < 0 ? c.n_layers / 2 : options_.feature_layer);
  feature_layers_.insert(feature_layers_.end(), options_.extra_feature_layers.begin(),
                         options_.extra_feature_layers.end());
  feature_slot_.assign(static_cast<size_t>(c.n_layers), -1);
  for (size_t k = 0; k < feature_layers_.size(); ++k) {
    const int layer = feature_layers_[k];
    if (layer < 0 || layer >= c.n_layers) {
      throw UsageError("cpu decoder: feature layer " + std::to_string(layer) + " is out of range [0, " +
                       std::to_string(c.n_layers - 1) + "]");
    }
    if (feature_slot_[static_cast<size_t>(layer)] >= 0) {
      throw UsageError("cpu decoder: feature layer " + std::to_string(layer) + " is listed twice");
    }
    feature_slot_[static_cast<size_t>(layer)] = static_cast<int>(k);
  }
  if (options_.threads < 0) throw UsageError("cpu decoder: threads must be >= 0");
  threads_ = options_.threads > 0 ? options_.threads : default_thread_count();
  // Eigen's GEMM thread count is process-wide; only an explicit request changes it.
  if (options_.threads > 0) Eigen::setNbThreads(options_.threads);

  const RopeScaling& rs = options_.rope_scaling;
  if (rs.kind != RopeScaling::Kind::kNone && !(rs.factor >= 1.0)) {
    throw UsageError("cpu decoder: rope scaling factor must be >= 1, got " +
                     std::to_string(rs.factor));
  }
  const int hd = c.head_dim;
  double base = c.rope_base;
  if (rs.kind == RopeScaling::Kind::kNtk) {
    base *= std::pow(rs.factor, static_cast<double>(hd) / static_cast<double>(hd - 2));
  }
  if (rs.kind == RopeScaling::Kind::kLinear) position_scale_ = 1.0 / rs.factor;
  inv_freq_.resize(static_cast<size_t>(hd / 2));
  for (int i = 0; i < hd / 2; ++i) {
    inv_freq_[static_cast<size_t>(i)] =
        std::pow(base, -2.0 * static_cast<double>(i) / static_cast<double>(hd));
  }
}

int64_t LlamaDecoder::max_context() const {
  const int64_t trained = config().context_length;
  if (trained <= 0) return std::numeric_limits<int64_t>::max();
  if (options_.rope_scaling.kind == RopeScaling::Kind::kNone) return trained;
  return static_cast<int64_t>(static_cast<double>(trained) * options_.rope_scaling.factor);
}

void LlamaDecoder::reset() {
  cache_.clear();
  hidden_sums_.clear();
}

void LlamaDecoder::check_token(int32_t token, const char* where) const {
  if (token < 0 || token >= config().vocab) {
    throw InputError(std::string("cpu decoder: ") + where + ": token id " + std::to_string(token) +
                     " is outside the vocabulary [0, " + std::to_string(config().vocab) + ")");
  }
}

void LlamaDecoder::check_room(int64_t extra) const {
  const int64_t limit = max_context();
  if (n_tokens() + extra > limit) {
    throw InputError("cpu decoder: context of " + std::to_string(n_tokens() + extra) +
                     " tokens exceeds the model's usable context of " + std::to_string(limit) +
                     " (rope scaling extends it)");
  }
}

// ---- RoPE -----------------------------------------------------------------------------

void LlamaDecoder::rope_rows(float* rows, int64_t n_rows, int64_t row_stride, int n_heads_in_row,
                             int64_t first_position) const {
  const int hd = config().head_dim;
  const int half = hd / 2;
  const bool adjacent = weights_->rope_pairs_adjacent;
#pragma omp parallel for schedule(static) num_threads(threads_) if (n_rows > 16)
  for (int64_t r = 0; r < n_rows; ++r) {
    std::vector<float> cos_t(static_cast<size_t>(half));
    std::vector<float> sin_t(static_cast<size_t>(half));
    // The angle in double: at position 10⁴ a float angle would already be off by ~1e-3 rad.
    const double pos = static_cast<double>(first_position + r) * position_scale_;
    for (int i = 0; i < half; ++i) {
      const double angle = pos * inv_freq_[static_cast<size_t>(i)];
      cos_t[static_cast<size_t>(i)] = static_cast<float>(std::cos(angle));
      sin_t[static_cast<size_t>(i)] = static_cast<float>(std::sin(angle));
    }
    float* row = rows + r * row_stride;
    for (int h = 0; h < n_heads_in_row; ++h) {
      float* x = row + static_cast<ptrdiff_t>(h) * hd;
      for (int i = 0; i < half; ++i) {
        float& a = adjacent ? x[2 * i] : x[i];
        float& b = adjacent ? x[2 * i + 1] : x[i + half];
        const float c = cos_t[static_cast<size_t>(i)];
        const float s = sin_t[static_cast<size_t>(i)];
        const float a0 = a;
        a = a0 * c - b * s;
        b = a0 * s + b * c;
      }
    }
  }
}

// ---- features -------------------------------------------------------------------------

void LlamaDecoder::add_hidden_feature(int slot, const float* hidden_row, int64_t position) {
  if (options_.chunk_feature_source != ChunkFeatureSource::kHidden) return;
  const int hidden = config().hidden;
  const auto chunk = static_cast<size_t>(position / options_.chunk_tokens);
  if (hidden_sums_.size() <= chunk) {
    hidden_sums_.resize(chunk + 1, std::vector<float>(feature_layers_.size() * static_cast<size_t>(hidden), 0.0F));
  }
  VecMap(hidden_sums_[chunk].data() + static_cast<ptrdiff_t>(slot) * hidden, hidden) += ConstVecMap(hidden_row, hidden);
}

void LlamaDecoder::group_mean(const float* q, float* out) const {
  const LlamaConfig& c = config();
  const int hd = c.head_dim;
  const int group = c.n_heads / c.n_kv_heads;
  const auto inv = 1.0F / static_cast<float>(group);
  for (int g = 0; g < c.n_kv_heads; ++g) {
    VecMap m(out + static_cast<ptrdiff_t>(g) * hd, hd);
    m.setZero();
    for (int j = 0; j < group; ++j) m += ConstVecMap(q + static_cast<ptrdiff_t>(g * group + j) * hd, hd);
    m *= inv;
  }
}

int64_t LlamaDecoder::n_complete_chunks() const { return n_tokens() / options_.chunk_tokens; }

int LlamaDecoder::chunk_feature_size() const {
  const int per_layer = options_.chunk_feature_source == ChunkFeatureSource::kKeys
                            ? config().n_kv_heads * config().head_dim
                            : config().hidden;
  return per_layer * static_cast<int>(feature_layers_.size());
}

Eigen::VectorXf LlamaDecoder::chunk_features(int64_t chunk) const {
  if (chunk < 0 || chunk >= n_complete_chunks()) {
    throw InputError("cpu decoder: chunk_features: chunk " + std::to_string(chunk) +
                     " is not complete (complete chunks: " + std::to_string(n_complete_chunks()) +
                     ")");
  }
  const auto inv_count = 1.0F / static_cast<float>(options_.chunk_tokens);
  if (options_.chunk_feature_source == ChunkFeatureSource::kHidden) {
    return ConstVecMap(hidden_sums_[static_cast<size_t>(chunk)].data(), chunk_feature_size()) * inv_count;
  }
  const int hd = config().head_dim;
  const int kv = config().n_kv_heads;
  Eigen::VectorXf f(chunk_feature_size());
  for (size_t k = 0; k < feature_layers_.size(); ++k) {
    for (int h = 0; h < kv; ++h) {
      f.segment((static_cast<Eigen::Index>(k) * kv + h) * hd, hd) =
          ConstVecMap(cache_.key_sum(feature_layers_[k], chunk, h), hd) * inv_count;
    }
  }
  return f;
}

void LlamaDecoder::chunk_keys(int64_t chunk, float* key_min, float* key_max, float* key_repr) const {
  if (chunk < 0 || chunk >= n_complete_chunks()) {
    throw InputError("cpu decoder: chunk_keys: chunk " + std::to_string(chunk) +
                     " is not complete (complete chunks: " + std::to_string(n_complete_chunks()) + ")");
  }
  const LlamaConfig& c = config();
  const int hd = c.head_dim;
  const int ct = options_.chunk_tokens;
  // The last token has no later query in its chunk: it is a candidate only when the chunk is
  // too small to leave kRepresentativeTokens others.
  const int candidates = ct - 1 >= kRepresentativeTokens ? ct - 1 : ct;
  const int chosen = std::min(kRepresentativeTokens, candidates);
  std::vector<int> order(static_cast<size_t>(candidates));
  for (int l = 0; l < c.n_layers; ++l) {
    for (int g = 0; g < c.n_kv_heads; ++g) {
      const size_t row = (static_cast<size_t>(l) * c.n_kv_heads + g) * hd;
      const ConstRowMap keys(cache_.keys(l, chunk, g), ct, hd);
      VecMap(key_min + row, hd) = keys.colwise().minCoeff().transpose();
      VecMap(key_max + row, hd) = keys.colwise().maxCoeff().transpose();
      // Token i is scored by its ct − 1 − i later queries: rank by their mean.
      const float* score = cache_.representative_scores(l, chunk, g);
      auto mean_score = [&](int i) { return i + 1 < ct ? score[i] / static_cast<float>(ct - 1 - i) : 0.0F; };
      for (int i = 0; i < candidates; ++i) order[static_cast<size_t>(i)] = i;
      std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return mean_score(a) > mean_score(b); });
      VecMap repr(key_repr + row, hd);
      repr.setZero();
      for (int j = 0; j < chosen; ++j) repr += keys.row(order[static_cast<size_t>(j)]).transpose();
      repr /= static_cast<float>(chosen);
    }
  }
}

Eigen::VectorXf LlamaDecoder::logits_of(const float* residual_row) const {
  const LlamaWeights& w = *weights_;
  Eigen::VectorXf normed(config().hidden);
  rms_norm(residual_row, w.output_norm, config().rms_eps, normed.data());
  Eigen::VectorXf logits(config().vocab);
  matvec(w.output_matrix(), normed.data(), logits.data(), threads_);
  return logits;
}

// ---- prefill --------------------------------------------------------------------------

StepResult LlamaDecoder::prefill(std::span<const int32_t> tokens, RowMatrix* all_logits) {
  if (tokens.empty()) throw InputError("cpu decoder: prefill: the prompt is empty");
  for (int32_t t : tokens) check_token(t, "prefill");
  check_room(static_cast<int64_t>(tokens.size()));
  const LlamaConfig& c = config();
  StepResult out;
  const int64_t final_tokens = n_tokens() + static_cast<int64_t>(tokens.size());
  const int64_t final_chunks = (final_tokens + options_.chunk_tokens - 1) / options_.chunk_tokens;
  out.position = final_tokens - 1;
  out.chunk_mass = RowMatrix::Zero(static_cast<Eigen::Index>(c.n_layers) * c.n_kv_heads, final_chunks);
  out.summary_mass = Eigen::VectorXf::Zero(out.chunk_mass.rows());
  const auto n = static_cast<int64_t>(tokens.size());
  out.query_vectors.resize(out.chunk_mass.rows(), c.head_dim);
  if (options_.prefill_window > 0) {
    out.prefill_window = std::min<int64_t>(options_.prefill_window, n);
    out.prefill_mass = RowMatrix::Zero(out.chunk_mass.rows(), final_chunks);
  }
  if (all_logits != nullptr) all_logits->resize(n, c.vocab);
  for (int64_t b = 0; b < n; b += options_.prefill_block) {
    const int64_t len = std::min<int64_t>(options_.prefill_block, n - b);
    prefill_block(tokens.data() + b, len, b + len == n, out, all_logits, b);
  }
  return out;
}

void LlamaDecoder::prefill_block(const int32_t* tokens, int64_t n, bool last_block,
                                 StepResult& out, RowMatrix* all_logits, int64_t logits_row) {
  const LlamaWeights& w = *weights_;
  const LlamaConfig& c = w.config;
  const int64_t p0 = n_tokens();
  const int q_dim = c.n_heads * c.head_dim;
  RowMatrix x(n, c.hidden);
  for (int64_t t = 0; t < n; ++t) x.row(t) = w.token_embd.row(tokens[t]);

  RowMatrix h, q, k, v, attn, gate, up;
  for (int l = 0; l < c.n_layers; ++l) {
    const LlamaLayerWeights& lw = w.layers[static_cast<size_t>(l)];
    if (const int slot = feature_slot(l); slot >= 0) {
      for (int64_t t = 0; t < n; ++t) add_hidden_feature(slot, x.row(t).data(), p0 + t);
      if (last_block) {
        out.query_features.resize(static_cast<Eigen::Index>(feature_layers_.size()) * c.hidden);
        out.query_features.segment(static_cast<Eigen::Index>(slot) * c.hidden, c.hidden) = x.row(n - 1).transpose();
      }
    }
    rms_norm_rows(x, lw.attn_norm, c.rms_eps, h, threads_);
    q.noalias() = h * lw.wq.transpose();
    k.noalias() = h * lw.wk.transpose();
    v.noalias() = h * lw.wv.transpose();
    rope_rows(q.data(), n, q.cols(), c.n_heads, p0);
    rope_rows(k.data(), n, k.cols(), c.n_kv_heads, p0);
    for (int64_t t = 0; t < n; ++t) cache_.append(l, k.row(t).data(), v.row(t).data());
    prefill_representatives(l, q, p0, last_block ? &out : nullptr);
    attn.resize(n, q_dim);
    prefill_attention(l, q, p0, attn, last_block ? &out : nullptr, out);
    x.noalias() += attn * lw.wo.transpose();

    rms_norm_rows(x, lw.ffn_norm, c.rms_eps, h, threads_);
    gate.noalias() = h * lw.w_gate.transpose();
    up.noalias() = h * lw.w_up.transpose();
    swiglu(gate, up);
    x.noalias() += gate * lw.w_down.transpose();
  }
  if (last_block) out.logits = logits_of(x.row(n - 1).data());
  if (all_logits != nullptr) {
    rms_norm_rows(x, w.output_norm, c.rms_eps, h, threads_);
    all_logits->middleRows(logits_row, n).noalias() = h * w.output_matrix().transpose();
  }
}

void LlamaDecoder::prefill_representatives(int layer, const RowMatrix& q, int64_t first_position,
                                           StepResult* last) {
  const LlamaConfig& c = config();
  const int ct = options_.chunk_tokens;
  const int64_t n = q.rows();
  const int64_t first_chunk = first_position / ct;
  const int64_t last_chunk = (first_position + n - 1) / ct;
  // Tokens of one chunk score each other, so chunks are the unit of parallel work.
#pragma omp parallel for schedule(static) num_threads(threads_) if (n * ct * c.n_kv_heads * c.head_dim > (1 << 16))
  for (int64_t chunk = first_chunk; chunk <= last_chunk; ++chunk) {
    std::vector<float> mean(static_cast<size_t>(c.n_kv_heads) * c.head_dim);
    const int64_t t0 = std::max(chunk * ct, first_position) - first_position;
    const int64_t t1 = std::min((chunk + 1) * ct, first_position + n) - first_position;
    for (int64_t t = t0; t < t1; ++t) {
      group_mean(q.row(t).data(), mean.data());
      cache_.score_representatives(layer, first_position + t, mean.data());
      if (last != nullptr && t == n - 1) {
        for (int g = 0; g < c.n_kv_heads; ++g) {
          last->query_vectors.row(static_cast<Eigen::Index>(layer) * c.n_kv_heads + g) =
              ConstVecMap(mean.data() + static_cast<ptrdiff_t>(g) * c.head_dim, c.head_dim).transpose();
        }
      }
    }
  }
}

void LlamaDecoder::prefill_attention(int layer, const RowMatrix& q, int64_t first_position,
                                     RowMatrix& attn_out, StepResult* last_mass, StepResult& window_out) {
  const LlamaConfig& c = config();
  const int hd = c.head_dim;
  const int ct = options_.chunk_tokens;
  const int64_t n = q.rows();
  const int64_t total = first_position + n;
  const int64_t n_chunks = cache_.n_chunks(layer);

  // Gather each KV head's keys/values contiguously: one copy of O(total·hd) feeds
  // O(group·n·total·hd) flops of GEMM, and lets Eigen see one big product.
  std::vector<RowMatrix> keys(static_cast<size_t>(c.n_kv_heads));
  std::vector<RowMatrix> values(static_cast<size_t>(c.n_kv_heads));
#pragma omp parallel for schedule(static) num_threads(threads_) if (total * hd > (1 << 14))
  for (int g = 0; g < c.n_kv_heads; ++g) {
    RowMatrix& kg = keys[static_cast<size_t>(g)];
    RowMatrix& vg = values[static_cast<size_t>(g)];
    kg.resize(total, hd);
    vg.resize(total, hd);
    for (int64_t ch = 0; ch < n_chunks; ++ch) {
      const int cnt = cache_.chunk_token_count(layer, ch);
      kg.middleRows(ch * ct, cnt) = ConstRowMap(cache_.keys(layer, ch, g), cnt, hd);
      vg.middleRows(ch * ct, cnt) = ConstRowMap(cache_.values(layer, ch, g), cnt, hd);
    }
  }

  const auto scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
  constexpr int64_t kRowBlock = 64;
  const int64_t n_row_blocks = (n + kRowBlock - 1) / kRowBlock;
  const int64_t n_tasks = static_cast<int64_t>(c.n_heads) * n_row_blocks;
  const int group = c.n_heads / c.n_kv_heads;
  // The last query row's probabilities per query head, for the mass report.
  RowMatrix last_probs;
  if (last_mass != nullptr) last_probs.resize(c.n_heads, total);
  // The prefill observation: positions from window_first on, each weighing 1/window.
  const int64_t window = window_out.prefill_window;
  const int64_t window_first = window_out.position + 1 - window;

#pragma omp parallel for schedule(dynamic, 1) num_threads(threads_) if (n * total * hd > (1 << 16))
  for (int64_t task = 0; task < n_tasks; ++task) {
    // Later row blocks see more keys; hand them out first for balance.
    const int64_t rb = n_row_blocks - 1 - task / c.n_heads;
    const int head = static_cast<int>(task % c.n_heads);
    const int g = head / group;
    const int64_t r0 = rb * kRowBlock;
    const int64_t rows = std::min(kRowBlock, n - r0);
    const int64_t kmax = first_position + r0 + rows;  // keys visible to the block's last row
    RowMatrix s(rows, kmax);
    s.noalias() = (q.block(r0, static_cast<Eigen::Index>(head) * hd, rows, hd) * scale) *
                  keys[static_cast<size_t>(g)].topRows(kmax).transpose();
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t valid = first_position + r0 + i + 1;  // causal: keys at positions ≤ own
      auto row = s.row(i).head(valid).array();
      const float m = row.maxCoeff();
      row = (row - m).exp();
      row /= row.sum();
      s.row(i).tail(kmax - valid).setZero();
    }
    attn_out.block(r0, static_cast<Eigen::Index>(head) * hd, rows, hd).noalias() =
        s * values[static_cast<size_t>(g)].topRows(kmax);
    if (last_mass != nullptr && r0 + rows == n) last_probs.row(head) = s.row(rows - 1);
    if (window > 0 && first_position + r0 + rows > window_first) {
      Eigen::VectorXf sum = Eigen::VectorXf::Zero(kmax);
      for (int64_t i = std::max<int64_t>(0, window_first - first_position - r0); i < rows; ++i) {
        sum += s.row(i).transpose();
      }
      const auto weight = 1.0F / static_cast<float>(group * window);
      const Eigen::Index row = static_cast<Eigen::Index>(layer) * c.n_kv_heads + g;
#pragma omp critical(kvlab_prefill_window)
      for (int64_t ch = 0; ch * ct < kmax; ++ch) {
        const int64_t cnt = std::min<int64_t>(ct, kmax - ch * ct);
        window_out.prefill_mass(row, ch) += sum.segment(ch * ct, cnt).sum() * weight;
      }
    }
  }

  if (last_mass != nullptr) {
    for (int head = 0; head < c.n_heads; ++head) {
      const Eigen::Index row = static_cast<Eigen::Index>(layer) * c.n_kv_heads + head / group;
      for (int64_t ch = 0; ch < n_chunks; ++ch) {
        const int cnt = cache_.chunk_token_count(layer, ch);
        last_mass->chunk_mass(row, ch) +=
            last_probs.row(head).segment(ch * ct, cnt).sum() / static_cast<float>(group);
      }
    }
  }
}

// ---- decode ---------------------------------------------------------------------------

StepResult LlamaDecoder::step(int32_t token, const StepRequest& request) {
  check_token(token, "step");
  check_room(1);
  const LlamaWeights& w = *weights_;
  const LlamaConfig& c = w.config;
  const int ct = options_.chunk_tokens;
  if (request.include_summaries &&
      (request.summary_ratio <= 0 || request.summary_ratio % ct != 0)) {
    throw UsageError("cpu decoder: summary_ratio " + std::to_string(request.summary_ratio) +
                     " must be a positive multiple of chunk_tokens " + std::to_string(ct));
  }
  const auto n_rows = static_cast<size_t>(c.n_layers) * static_cast<size_t>(c.n_kv_heads);
  if (request.residency.rows.size() > 1 && request.residency.rows.size() != n_rows) {
    throw UsageError("cpu decoder: residency has " + std::to_string(request.residency.rows.size()) +
                     " rows; expected 1 (uniform) or " + std::to_string(n_rows) +
                     " (n_layers x n_kv_heads)");
  }

  const int64_t pos = n_tokens();
  const int q_dim = c.n_heads * c.head_dim;
  const int kv_dim = c.n_kv_heads * c.head_dim;
  StepResult out;
  out.position = pos;
  const int64_t n_chunks = (pos + 1 + ct - 1) / ct;
  out.chunk_mass = RowMatrix::Zero(static_cast<Eigen::Index>(n_rows), n_chunks);
  out.summary_mass = Eigen::VectorXf::Zero(static_cast<Eigen::Index>(n_rows));
  if (request.full_reference_mass) {
    out.full_mass = RowMatrix::Zero(static_cast<Eigen::Index>(n_rows), n_chunks);
  }
  out.query_vectors.resize(static_cast<Eigen::Index>(n_rows), c.head_dim);
  std::vector<float> mean(static_cast<size_t>(kv_dim));

  Eigen::VectorXf x = w.token_embd.row(token).transpose();
  Eigen::VectorXf h(c.hidden), q(q_dim), k(kv_dim), v(kv_dim), attn(q_dim),
      delta(c.hidden), gate(c.ffn), up(c.ffn);
  for (int l = 0; l < c.n_layers; ++l) {
    const LlamaLayerWeights& lw = w.layers[static_cast<size_t>(l)];
    if (const int slot = feature_slot(l); slot >= 0) {
      out.query_features.resize(static_cast<Eigen::Index>(feature_layers_.size()) * c.hidden);
      out.query_features.segment(static_cast<Eigen::Index>(slot) * c.hidden, c.hidden) = x;
      add_hidden_feature(slot, x.data(), pos);
    }
    rms_norm(x.data(), lw.attn_norm, c.rms_eps, h.data());
    matvec({{&lw.wq, q.data()}, {&lw.wk, k.data()}, {&lw.wv, v.data()}}, h.data(), threads_);
    rope_rows(q.data(), 1, q.size(), c.n_heads, pos);
    rope_rows(k.data(), 1, k.size(), c.n_kv_heads, pos);
    cache_.append(l, k.data(), v.data());
    group_mean(q.data(), mean.data());
    cache_.score_representatives(l, pos, mean.data());
    for (int g = 0; g < c.n_kv_heads; ++g) {
      out.query_vectors.row(static_cast<Eigen::Index>(l) * c.n_kv_heads + g) =
          ConstVecMap(mean.data() + static_cast<ptrdiff_t>(g) * c.head_dim, c.head_dim).transpose();
    }
    decode_attention(l, q.data(), request, attn.data(), out);
    matvec(lw.wo, attn.data(), delta.data(), threads_);
    x += delta;

    rms_norm(x.data(), lw.ffn_norm, c.rms_eps, h.data());
    matvec({{&lw.w_gate, gate.data()}, {&lw.w_up, up.data()}}, h.data(), threads_);
    swiglu(gate, up);
    matvec(lw.w_down, gate.data(), delta.data(), threads_);
    x += delta;
  }
  out.logits = logits_of(x.data());
  return out;
}

void LlamaDecoder::decode_attention(int layer, const float* q, const StepRequest& request, float* attn_out,
                                    StepResult& out) {
  const LlamaConfig& c = config();
  const int hd = c.head_dim;
  const int ct = options_.chunk_tokens;
  const int group = c.n_heads / c.n_kv_heads;
  const int n_kv = c.n_kv_heads;
  const int64_t n_chunks = cache_.n_chunks(layer);
  const auto scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
  const bool need_all = request.full_reference_mass;
  const int last_tokens = cache_.chunk_token_count(layer, n_chunks - 1);
  const bool parallel = n_chunks * ct * n_kv * hd > (1 << 15);

  // One KV head (its group of query heads) per task: the reference over the head's pages. An
  // exception must not leave an OpenMP region, so the first one is carried out of it.
  std::exception_ptr error;
#pragma omp parallel for schedule(static) num_threads(threads_) if (parallel)
  for (int g = 0; g < n_kv; ++g) {
    try {
      std::vector<const float*> keys(static_cast<size_t>(n_chunks)), values(keys.size());
      std::vector<const float*> key_sums(keys.size()), value_sums(keys.size());
      std::vector<int64_t> attended;
      attended.reserve(keys.size());
      const ResidentChunks* row = request.residency.row(layer * n_kv + g);
      for (int64_t ch = 0; ch < n_chunks; ++ch) {
        const auto i = static_cast<size_t>(ch);
        keys[i] = cache_.keys(layer, ch, g);
        values[i] = cache_.values(layer, ch, g);
        key_sums[i] = cache_.key_sum(layer, ch, g);
        value_sums[i] = cache_.value_sum(layer, ch, g);
        // The chunk being written is always attended.
        if (row == nullptr || ch + 1 == n_chunks || row->test(ch)) attended.push_back(ch);
      }
      attention::SparseDecodeInputs in;
      in.query = q + static_cast<ptrdiff_t>(g) * group * hd;
      in.group = group;
      in.head_dim = hd;
      in.scale = scale;
      in.kv = {keys, values, ct, last_tokens, hd};
      in.attended = attended;
      attention::OwnedSummaries summaries;
      if (request.include_summaries) {
        summaries =
            attention::summarize_unattended(in.kv, {key_sums, value_sums}, hd, attended, request.summary_ratio / ct);
        in.summaries = summaries.view();
      }
      const Eigen::Index r = static_cast<Eigen::Index>(layer) * n_kv + g;
      std::vector<float> chunk_mass(static_cast<size_t>(n_chunks));
      std::vector<float> full_mass(need_all ? chunk_mass.size() : 0);
      float summary_mass = 0.0F;
      attention::sparse_decode_reference(in, {attn_out + static_cast<ptrdiff_t>(g) * group * hd, chunk_mass.data(),
                                              &summary_mass, need_all ? full_mass.data() : nullptr});
      out.chunk_mass.row(r).head(n_chunks) = ConstVecMap(chunk_mass.data(), n_chunks).transpose();
      out.summary_mass(r) = summary_mass;
      if (need_all) out.full_mass.row(r).head(n_chunks) = ConstVecMap(full_mass.data(), n_chunks).transpose();
    } catch (...) {
#pragma omp critical(kvlab_decode_attention_error)
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace kvlab
