// LLaMA-architecture configuration and float32 weights read from a GGUF file.
//
// Layout of the matrices (all row-major float32, y = W x with x a column vector):
//   token_embd [vocab x hidden]      one row per token
//   wq [n_heads*head_dim x hidden], wk / wv [n_kv_heads*head_dim x hidden]
//   wo [hidden x n_heads*head_dim], w_gate / w_up [ffn x hidden], w_down [hidden x ffn]
// GGUF lists dims fastest-first, so a tensor with dims [576, 1536] is a 1536 x 576 matrix
// whose rows have 576 elements; rows are copied in file order.
//
// Rotary layout of Q and K: the GGUF converter permutes the rows of attn_q / attn_k so that,
// inside each head, rows 2i and 2i+1 form one rotary pair (HF's half-split rows i and
// i + head_dim/2). We keep the rows exactly as stored, so LlamaWeights::rope_pairs_adjacent
// is true: the decoder must rotate element pairs (2i, 2i+1) of each head by the angle
// pos * rope_base^(-2i/head_dim). (Scores are unchanged by this permutation because Q and K
// are permuted alike, but the rotation must match it.)
//
// Tied embeddings: when the file has no output.weight, the logits use token_embd
// (tied_embeddings = true and `output` is empty).
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "backends/model/gguf.hpp"

namespace kvlab {

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Vector = Eigen::VectorXf;

/// Hyper-parameters of a LLaMA model, from GGUF metadata.
struct LlamaConfig {
  std::string architecture;  ///< always "llama"
  std::string name;          ///< general.name, or "" when absent
  int n_layers = 0;
  int hidden = 0;
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int ffn = 0;
  float rms_eps = 0.0F;
  float rope_base = 0.0F;
  int context_length = 0;
  int vocab = 0;
  int bos_id = -1;  ///< -1 when the file names none
  int eos_id = -1;
  int pad_id = -1;
};

/// Read and validate the config. Throws InputError naming the file and key; a non-llama
/// architecture gives "<file>: architecture 'X' is not supported (need llama)".
LlamaConfig read_llama_config(const GgufFile& file);

struct LlamaLayerWeights {
  Vector attn_norm;  ///< [hidden]
  RowMatrix wq;      ///< [n_heads*head_dim x hidden], rotary pairs adjacent (see above)
  RowMatrix wk;      ///< [n_kv_heads*head_dim x hidden], rotary pairs adjacent
  RowMatrix wv;      ///< [n_kv_heads*head_dim x hidden]
  RowMatrix wo;      ///< [hidden x n_heads*head_dim]
  Vector ffn_norm;   ///< [hidden]
  RowMatrix w_gate;  ///< [ffn x hidden]
  RowMatrix w_up;    ///< [ffn x hidden]
  RowMatrix w_down;  ///< [hidden x ffn]
};

struct LlamaWeights {
  LlamaConfig config;
  RowMatrix token_embd;  ///< [vocab x hidden]
  Vector output_norm;    ///< [hidden]
  RowMatrix output;      ///< [vocab x hidden]; empty when tied_embeddings
  bool tied_embeddings = true;
  /// Q/K rows kept in GGUF order: rotate pairs (2i, 2i+1) within each head.
  bool rope_pairs_adjacent = true;
  std::vector<LlamaLayerWeights> layers;

  /// The matrix that maps the final hidden state to logits.
  const RowMatrix& output_matrix() const { return tied_embeddings ? token_embd : output; }
};

/// Dequantise every weight to float32, checking each tensor's presence and shape.
LlamaWeights load_llama(const GgufFile& file);

/// Open a model file, with a hint when it is absent: "model file X not found; fetch it
/// with scripts/fetch-model.sh (make model)".
GgufFile open_model_file(const std::filesystem::path& path);

/// $KVLAB_MODEL when set, else <source tree>/models/SmolLM2-135M-Instruct.Q4_1.gguf.
std::filesystem::path default_model_path();

}  // namespace kvlab
