// Test support: a tiny random Llama and a naive double-precision reference forward pass.
//
// The reference is written for clarity, not speed: HF half-split RoPE on the un-permuted
// Q/K rows, explicit loops for attention, and a predicate saying which keys each query may
// see (to mirror residency restrictions), plus the compressed-tier summaries.
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <vector>

#include <Eigen/Dense>

#include "backends/model/llama_weights.hpp"

namespace kvlab::test {

using MatD = Eigen::MatrixXd;
using VecD = Eigen::VectorXd;

struct TinyShape {
  int n_layers = 2;
  int hidden = 32;
  int n_heads = 4;
  int n_kv_heads = 2;
  int head_dim = 8;
  int ffn = 48;
  int vocab = 50;
  float rope_base = 10000.0F;
};

/// Random weights in the HF layout (rotary pairs (i, i + head_dim/2)). Scales are chosen so
/// that attention is far from uniform and logits spread over several units.
inline LlamaWeights make_tiny_hf(const TinyShape& s, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0F, 1.0F);
  auto mat = [&](int rows, int cols, float scale) {
    RowMatrix m(rows, cols);
    for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = normal(rng) * scale;
    return m;
  };
  auto norm_vec = [&](int n) {
    Vector v(n);
    for (int i = 0; i < n; ++i) v(i) = 1.0F + 0.2F * normal(rng);
    return v;
  };
  LlamaWeights w;
  LlamaConfig& c = w.config;
  c.architecture = "llama";
  c.n_layers = s.n_layers;
  c.hidden = s.hidden;
  c.n_heads = s.n_heads;
  c.n_kv_heads = s.n_kv_heads;
  c.head_dim = s.head_dim;
  c.ffn = s.ffn;
  c.vocab = s.vocab;
  c.rms_eps = 1e-5F;
  c.rope_base = s.rope_base;
  c.context_length = 0;  // unbounded: tests go to long positions
  const float in_scale = 1.0F / std::sqrt(static_cast<float>(s.hidden));
  w.token_embd = mat(s.vocab, s.hidden, 1.0F);
  w.output_norm = norm_vec(s.hidden);
  w.tied_embeddings = true;
  w.rope_pairs_adjacent = false;
  for (int l = 0; l < s.n_layers; ++l) {
    LlamaLayerWeights lw;
    lw.attn_norm = norm_vec(s.hidden);
    lw.wq = mat(s.n_heads * s.head_dim, s.hidden, 2.0F * in_scale);
    lw.wk = mat(s.n_kv_heads * s.head_dim, s.hidden, 2.0F * in_scale);
    lw.wv = mat(s.n_kv_heads * s.head_dim, s.hidden, in_scale);
    lw.wo = mat(s.hidden, s.n_heads * s.head_dim, in_scale);
    lw.ffn_norm = norm_vec(s.hidden);
    lw.w_gate = mat(s.ffn, s.hidden, in_scale);
    lw.w_up = mat(s.ffn, s.hidden, in_scale);
    lw.w_down = mat(s.hidden, s.ffn, 1.0F / std::sqrt(static_cast<float>(s.ffn)));
    w.layers.push_back(std::move(lw));
  }
  return w;
}

/// The GGUF converter's row permutation of Q/K: within each head, new row 2i + s is HF row
/// s·head_dim/2 + i, so rotary pairs become adjacent.
inline RowMatrix permute_rows_to_adjacent(const RowMatrix& m, int head_dim) {
  RowMatrix out(m.rows(), m.cols());
  const int half = head_dim / 2;
  for (Eigen::Index h = 0; h < m.rows() / head_dim; ++h) {
    for (int i = 0; i < half; ++i) {
      for (int s = 0; s < 2; ++s) out.row(h * head_dim + 2 * i + s) = m.row(h * head_dim + s * half + i);
    }
  }
  return out;
}

inline LlamaWeights to_gguf_layout(const LlamaWeights& hf) {
  LlamaWeights g = hf;
  for (auto& l : g.layers) {
    l.wq = permute_rows_to_adjacent(l.wq, hf.config.head_dim);
    l.wk = permute_rows_to_adjacent(l.wk, hf.config.head_dim);
  }
  g.rope_pairs_adjacent = true;
  return g;
}

/// Options of the naive forward pass.
struct NaiveOptions {
  double position_scale = 1.0;  // linear rope scaling: positions are multiplied by this
  double rope_base = 0.0;       // 0: the model's base
  /// May query position q at layer l, KV head g see key position k (k ≤ q)? Null: always.
  std::function<bool(int l, int g, int64_t q, int64_t k)> allowed;
  /// At the final position, add summary entries over disallowed keys, grouped by
  /// k / summary_ratio, with bias log(count).
  bool summaries = false;
  int summary_ratio = 128;
  int chunk_tokens = 64;  // for the per-chunk mass report
  /// The last layer computes only the final position (all the final logits need); saves
  /// O(n²) work in long-position tests.
  bool last_layer_final_only = false;
};

struct NaiveResult {
  VecD logits;             // final position
  MatD mass;               // [n_layers·n_kv × n_chunks] at the final position
  MatD full_mass;          // same, with every key allowed (same query)
  VecD summary_mass;       // [n_layers·n_kv]
  std::vector<MatD> keys;  // per layer [n × kv_dim], post-RoPE, HF layout
  std::vector<MatD> layer_input;  // per layer [n × hidden]: the residual stream entering it
};

inline NaiveResult naive_forward(const LlamaWeights& w, const std::vector<int32_t>& tokens,
                                 const NaiveOptions& opt = {}) {
  const LlamaConfig& c = w.config;
  const auto n = static_cast<int64_t>(tokens.size());
  const int hd = c.head_dim;
  const int half = hd / 2;
  const int group = c.n_heads / c.n_kv_heads;
  const double base = opt.rope_base > 0 ? opt.rope_base : static_cast<double>(c.rope_base);
  const int64_t n_chunks = (n + opt.chunk_tokens - 1) / opt.chunk_tokens;
  NaiveResult r;
  r.mass = MatD::Zero(c.n_layers * c.n_kv_heads, n_chunks);
  r.full_mass = r.mass;
  r.summary_mass = VecD::Zero(c.n_layers * c.n_kv_heads);

  auto rms = [&](const VecD& x, const Vector& wt) {
    const double inv = 1.0 / std::sqrt(x.squaredNorm() / static_cast<double>(x.size()) + c.rms_eps);
    return VecD((x * inv).array() * wt.cast<double>().array());
  };
  auto rope = [&](VecD& v, int64_t pos, int heads) {
    for (int h = 0; h < heads; ++h) {
      for (int i = 0; i < half; ++i) {
        const double theta = static_cast<double>(pos) * opt.position_scale *
                             std::pow(base, -2.0 * i / static_cast<double>(hd));
        const double a = v(h * hd + i);
        const double b = v(h * hd + i + half);
        v(h * hd + i) = a * std::cos(theta) - b * std::sin(theta);
        v(h * hd + i + half) = a * std::sin(theta) + b * std::cos(theta);
      }
    }
  };

  MatD x(n, c.hidden);
  for (int64_t t = 0; t < n; ++t) x.row(t) = w.token_embd.row(tokens[static_cast<size_t>(t)]).cast<double>();
  for (int l = 0; l < c.n_layers; ++l) {
    const LlamaLayerWeights& lw = w.layers[static_cast<size_t>(l)];
    r.layer_input.push_back(x);
    const MatD wq = lw.wq.cast<double>(), wk = lw.wk.cast<double>(), wv = lw.wv.cast<double>();
    MatD q(n, c.n_heads * hd), k(n, c.n_kv_heads * hd), v(n, c.n_kv_heads * hd);
    for (int64_t t = 0; t < n; ++t) {
      const VecD h = rms(x.row(t).transpose(), lw.attn_norm);
      VecD qt = wq * h, kt = wk * h;
      rope(qt, t, c.n_heads);
      rope(kt, t, c.n_kv_heads);
      q.row(t) = qt.transpose();
      k.row(t) = kt.transpose();
      v.row(t) = (wv * h).transpose();
    }
    r.keys.push_back(k);
    MatD attn = MatD::Zero(n, c.n_heads * hd);
    const int64_t first_q = (opt.last_layer_final_only && l == c.n_layers - 1) ? n - 1 : 0;
    for (int64_t qp = first_q; qp < n; ++qp) {
      const bool final_pos = qp == n - 1;
      for (int head = 0; head < c.n_heads; ++head) {
        const int g = head / group;
        const auto qv = q.row(qp).segment(head * hd, hd);
        // Entries: (score, value, chunk or -1 for a summary).
        std::vector<double> score;
        std::vector<VecD> value;
        std::vector<int64_t> chunk;
        std::vector<double> all_score;
        std::vector<VecD> sum_k, sum_v;
        std::vector<int64_t> sum_n;
        for (int64_t kp = 0; kp <= qp; ++kp) {
          const double s = qv.dot(k.row(kp).segment(g * hd, hd)) / std::sqrt(static_cast<double>(hd));
          all_score.push_back(s);
          if (!opt.allowed || opt.allowed(l, g, qp, kp)) {
            score.push_back(s);
            value.push_back(v.row(kp).segment(g * hd, hd).transpose());
            chunk.push_back(kp / opt.chunk_tokens);
          } else if (final_pos && opt.summaries) {
            const auto grp = static_cast<size_t>(kp / opt.summary_ratio);
            if (sum_k.size() <= grp) {
              sum_k.resize(grp + 1, VecD::Zero(hd));
              sum_v.resize(grp + 1, VecD::Zero(hd));
              sum_n.resize(grp + 1, 0);
            }
            sum_k[grp] += k.row(kp).segment(g * hd, hd).transpose();
            sum_v[grp] += v.row(kp).segment(g * hd, hd).transpose();
            ++sum_n[grp];
          }
        }
        for (size_t s = 0; s < sum_k.size(); ++s) {
          if (sum_n[s] == 0) continue;
          const auto cnt = static_cast<double>(sum_n[s]);
          score.push_back(qv.dot(sum_k[s] / cnt) / std::sqrt(static_cast<double>(hd)) + std::log(cnt));
          value.push_back(sum_v[s] / cnt);
          chunk.push_back(-1);
        }
        double m = -1e300;
        for (double s : score) m = std::max(m, s);
        double z = 0;
        for (double s : score) z += std::exp(s - m);
        VecD o = VecD::Zero(hd);
        const int row = l * c.n_kv_heads + g;
        for (size_t e = 0; e < score.size(); ++e) {
          const double p = std::exp(score[e] - m) / z;
          o += p * value[e];
          if (final_pos) {
            if (chunk[e] >= 0) r.mass(row, chunk[e]) += p / group;
            else r.summary_mass(row) += p / group;
          }
        }
        if (final_pos) {
          double ma = -1e300, za = 0;
          for (double s : all_score) ma = std::max(ma, s);
          for (double s : all_score) za += std::exp(s - ma);
          for (size_t kp = 0; kp < all_score.size(); ++kp) {
            r.full_mass(row, static_cast<int64_t>(kp) / opt.chunk_tokens) +=
                std::exp(all_score[kp] - ma) / za / group;
          }
        }
        attn.row(qp).segment(head * hd, hd) = o.transpose();
      }
    }
    const MatD wo = lw.wo.cast<double>(), wg = lw.w_gate.cast<double>(), wu = lw.w_up.cast<double>(),
               wd = lw.w_down.cast<double>();
    for (int64_t t = first_q; t < n; ++t) {
      VecD xt = x.row(t).transpose() + wo * attn.row(t).transpose();
      const VecD h = rms(xt, lw.ffn_norm);
      const VecD gt = wg * h, ut = wu * h;
      const VecD act = (gt.array() / (1.0 + (-gt.array()).exp())) * ut.array();
      x.row(t) = (xt + wd * act).transpose();
    }
  }
  const VecD final_h = rms(x.row(n - 1).transpose(), w.output_norm);
  r.logits = w.output_matrix().cast<double>() * final_h;
  return r;
}

}  // namespace kvlab::test
