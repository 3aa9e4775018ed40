// Random weights with SmolLM2-135M's shapes: for timing the GPU decoder and checking it against
// the CPU decoder at the real model's sizes where the model file is not at hand (the device
// machine). Deterministic for a seed.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>

#include "backends/model/llama_weights.hpp"

namespace kvlab::cuda {

/// Random weights with SmolLM2-135M's configuration (tied embeddings, GGUF rotary order).
inline kvlab::LlamaWeights synthetic_smollm2(uint32_t seed = 1) {
  kvlab::LlamaWeights w;
  kvlab::LlamaConfig& c = w.config;
  c.architecture = "llama";
  c.name = "synthetic SmolLM2-135M shapes";
  c.n_layers = 30;
  c.hidden = 576;
  c.n_heads = 9;
  c.n_kv_heads = 3;
  c.head_dim = 64;
  c.ffn = 1536;
  c.vocab = 49152;
  c.rms_eps = 1e-5F;
  c.rope_base = 100000.0F;
  c.context_length = 8192;
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0F, 1.0F);
  auto mat = [&](int rows, int cols, float scale) {
    kvlab::RowMatrix m(rows, cols);
    for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = normal(rng) * scale;
    return m;
  };
  const float s = 1.0F / std::sqrt(static_cast<float>(c.hidden));
  w.token_embd = mat(c.vocab, c.hidden, 1.0F);
  w.output_norm = Eigen::VectorXf::Ones(c.hidden);
  for (int l = 0; l < c.n_layers; ++l) {
    kvlab::LlamaLayerWeights lw;
    lw.attn_norm = Eigen::VectorXf::Ones(c.hidden);
    lw.ffn_norm = Eigen::VectorXf::Ones(c.hidden);
    lw.wq = mat(c.n_heads * c.head_dim, c.hidden, s);
    lw.wk = mat(c.n_kv_heads * c.head_dim, c.hidden, s);
    lw.wv = mat(c.n_kv_heads * c.head_dim, c.hidden, s);
    lw.wo = mat(c.hidden, c.n_heads * c.head_dim, s);
    lw.w_gate = mat(c.ffn, c.hidden, s);
    lw.w_up = mat(c.ffn, c.hidden, s);
    lw.w_down = mat(c.hidden, c.ffn, 1.0F / std::sqrt(static_cast<float>(c.ffn)));
    w.layers.push_back(std::move(lw));
  }
  return w;
}

}  // namespace kvlab::cuda
