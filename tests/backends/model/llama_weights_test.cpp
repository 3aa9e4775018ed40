#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>
#include <functional>

#include "backends/model/dequant.hpp"
#include "backends/model/llama_weights.hpp"
#include "core/error.hpp"
#include "gguf_builder.hpp"

namespace kvlab {
namespace {

using gguf_testing::Bytes;
using gguf_testing::GgufBuilder;
using gguf_testing::TempFile;

// A 2-layer llama with hidden 4, 2 heads of dim 2, 1 KV head, ffn 3, vocab 5.
GgufBuilder tiny_llama(bool tied = true) {
  GgufBuilder b;
  b.kv_string("general.architecture", "llama")
      .kv_u32("llama.block_count", 2)
      .kv_u32("llama.embedding_length", 4)
      .kv_u32("llama.attention.head_count", 2)
      .kv_u32("llama.attention.head_count_kv", 1)
      .kv_u32("llama.feed_forward_length", 3)
      .kv_u32("llama.context_length", 16)
      .kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-5F)
      .kv_f32("llama.rope.freq_base", 10000.0F)
      .kv_u32("llama.vocab_size", 5)
      .kv_u32("tokenizer.ggml.bos_token_id", 1)
      .kv_u32("tokenizer.ggml.eos_token_id", 2);
  // Value = 100*tensor + 10*row + col so any transposition shows up.
  int tensor_no = 0;
  auto mat = [&](const std::string& name, int rows, int cols) {
    std::vector<float> v;
    for (int r = 0; r < rows; ++r)
      for (int c = 0; c < cols; ++c) v.push_back(static_cast<float>(100 * tensor_no + 10 * r + c));
    ++tensor_no;
    b.tensor_f32(name, {static_cast<std::uint64_t>(cols), static_cast<std::uint64_t>(rows)}, v);
  };
  auto vec = [&](const std::string& name, int n) {
    std::vector<float> v(static_cast<std::size_t>(n), 1.0F + static_cast<float>(tensor_no++));
    b.tensor_f32(name, {static_cast<std::uint64_t>(n)}, v);
  };
  mat("token_embd.weight", 5, 4);
  vec("output_norm.weight", 4);
  if (!tied) mat("output.weight", 5, 4);
  for (int l = 0; l < 2; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    vec(p + "attn_norm.weight", 4);
    mat(p + "attn_q.weight", 4, 4);
    mat(p + "attn_k.weight", 2, 4);
    mat(p + "attn_v.weight", 2, 4);
    mat(p + "attn_output.weight", 4, 4);
    vec(p + "ffn_norm.weight", 4);
    mat(p + "ffn_gate.weight", 3, 4);
    mat(p + "ffn_up.weight", 3, 4);
    mat(p + "ffn_down.weight", 4, 3);
  }
  return b;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

TEST(LlamaWeights, LoadsTinyModelWithShapesAndRowOrder) {
  TempFile f(tiny_llama().bytes());
  const GgufFile g = GgufFile::open(f.path());
  const LlamaWeights w = load_llama(g);
  const LlamaConfig& c = w.config;
  EXPECT_EQ(c.n_layers, 2);
  EXPECT_EQ(c.hidden, 4);
  EXPECT_EQ(c.n_heads, 2);
  EXPECT_EQ(c.n_kv_heads, 1);
  EXPECT_EQ(c.head_dim, 2);
  EXPECT_EQ(c.ffn, 3);
  EXPECT_EQ(c.vocab, 5);
  EXPECT_EQ(c.bos_id, 1);
  EXPECT_EQ(c.eos_id, 2);
  EXPECT_EQ(c.pad_id, -1);
  EXPECT_TRUE(w.tied_embeddings);
  EXPECT_TRUE(w.rope_pairs_adjacent);
  EXPECT_EQ(&w.output_matrix(), &w.token_embd);
  ASSERT_EQ(w.layers.size(), 2U);
  EXPECT_EQ(w.token_embd.rows(), 5);
  EXPECT_EQ(w.token_embd.cols(), 4);
  EXPECT_EQ(w.token_embd(3, 2), 32.0F);  // tensor 0, row 3, col 2
  const LlamaLayerWeights& l1 = w.layers[1];
  EXPECT_EQ(l1.wk.rows(), 2);
  EXPECT_EQ(l1.wo.rows(), 4);
  EXPECT_EQ(l1.w_down.rows(), 4);
  EXPECT_EQ(l1.w_down.cols(), 3);
  // blk.1.ffn_down is tensor number 2 + 9 + 8 = 19.
  EXPECT_EQ(l1.w_down(3, 1), 1931.0F);
  EXPECT_EQ(l1.attn_norm(0), 12.0F);  // tensor 11 -> value 1 + 11
}

TEST(LlamaWeights, UntiedOutput) {
  TempFile f(tiny_llama(false).bytes());
  const LlamaWeights w = load_llama(GgufFile::open(f.path()));
  EXPECT_FALSE(w.tied_embeddings);
  EXPECT_EQ(w.output.rows(), 5);
  EXPECT_EQ(&w.output_matrix(), &w.output);
}

TEST(LlamaWeights, RejectsOtherArchitecture) {
  GgufBuilder b;
  b.kv_string("general.architecture", "gemma");
  TempFile f(b.bytes());
  const GgufFile g = GgufFile::open(f.path());
  const std::string msg = error_of([&] { read_llama_config(g); });
  EXPECT_NE(msg.find("architecture 'gemma' is not supported (need llama)"), std::string::npos) << msg;
}

TEST(LlamaWeights, RejectsWrongShapeAndMissingTensor) {
  {
    GgufBuilder bad;
    bad.kv_string("general.architecture", "llama")
        .kv_u32("llama.block_count", 1)
        .kv_u32("llama.embedding_length", 4)
        .kv_u32("llama.attention.head_count", 2)
        .kv_u32("llama.feed_forward_length", 3)
        .kv_u32("llama.context_length", 16)
        .kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-5F)
        .kv_u32("llama.vocab_size", 5);
    bad.tensor_f32("token_embd.weight", {5, 4}, std::vector<float>(20, 0));  // transposed
    TempFile f(bad.bytes());
    const GgufFile g = GgufFile::open(f.path());
    const std::string msg = error_of([&] { load_llama(g); });
    EXPECT_NE(msg.find("tensor 'token_embd.weight' has dims [5, 4], expected [4, 5]"), std::string::npos)
        << msg;
  }
  {
    GgufBuilder missing;
    missing.kv_string("general.architecture", "llama")
        .kv_u32("llama.block_count", 1)
        .kv_u32("llama.embedding_length", 4)
        .kv_u32("llama.attention.head_count", 2)
        .kv_u32("llama.feed_forward_length", 3)
        .kv_u32("llama.context_length", 16)
        .kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-5F)
        .kv_u32("llama.vocab_size", 5);
    missing.tensor_f32("token_embd.weight", {4, 5}, std::vector<float>(20, 0));
    TempFile f(missing.bytes());
    const GgufFile g = GgufFile::open(f.path());
    const std::string msg = error_of([&] { load_llama(g); });
    EXPECT_NE(msg.find("tensor 'output_norm.weight' is missing"), std::string::npos) << msg;
  }
}

TEST(LlamaWeights, MissingModelFileHint) {
  const std::string msg = error_of([] { open_model_file("/no/such/SmolLM2.gguf"); });
  EXPECT_EQ(msg, "model file /no/such/SmolLM2.gguf not found; fetch it with scripts/fetch-model.sh (make model)");
}

// ---- the real SmolLM2-135M file, when fetched ------------------------------------------

class SmolLm2File : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = default_model_path();
    if (!std::filesystem::exists(path_)) {
      GTEST_SKIP() << "model " << path_ << " absent; run scripts/fetch-model.sh (or set KVLAB_MODEL)";
    }
  }
  std::filesystem::path path_;
};

TEST_F(SmolLm2File, ConfigMatchesSmolLm2_135M) {
  const GgufFile g = GgufFile::open(path_);
  const LlamaConfig c = read_llama_config(g);
  EXPECT_EQ(c.architecture, "llama");
  EXPECT_EQ(c.n_layers, 30);
  EXPECT_EQ(c.hidden, 576);
  EXPECT_EQ(c.n_heads, 9);
  EXPECT_EQ(c.n_kv_heads, 3);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.ffn, 1536);
  EXPECT_FLOAT_EQ(c.rms_eps, 1e-5F);
  EXPECT_FLOAT_EQ(c.rope_base, 100000.0F);
  EXPECT_EQ(c.context_length, 8192);
  EXPECT_EQ(c.vocab, 49152);
  EXPECT_EQ(c.bos_id, 1);
  EXPECT_EQ(c.eos_id, 2);
  EXPECT_EQ(c.pad_id, 2);
  EXPECT_EQ(g.find_tensor("output.weight"), nullptr);
  EXPECT_EQ(g.tensors().size(), 2U + 9U * 30U);
}

TEST_F(SmolLm2File, WeightsMatchIndependentDequantisation) {
  const GgufFile g = GgufFile::open(path_);
  const LlamaWeights w = load_llama(g);
  EXPECT_TRUE(w.tied_embeddings);
  EXPECT_EQ(w.token_embd.rows(), 49152);
  EXPECT_EQ(w.layers.size(), 30U);
  EXPECT_EQ(w.layers[0].wk.rows(), 192);

  const std::filesystem::path expected_path =
      std::filesystem::path(__FILE__).parent_path() / "../../data/model/weights_expected.json";
  std::ifstream in(expected_path);
  ASSERT_TRUE(in) << expected_path;
  const nlohmann::json expected = nlohmann::json::parse(in);
  int checked = 0;
  for (const auto& s : expected.at("samples")) {
    const std::string name = s.at("tensor");
    const GgufTensorInfo& t = g.tensor(name);
    EXPECT_EQ(ggml_type_name(t.type), s.at("type").get<std::string>()) << name;
    const std::vector<float> all = dequantize(t);
    const auto row = s.at("row").get<std::size_t>();
    const auto col = s.at("col").get<std::size_t>();
    const auto values = s.at("values").get<std::vector<float>>();
    for (std::size_t k = 0; k < values.size(); ++k) {
      EXPECT_FLOAT_EQ(all[row * t.dims[0] + col + k], values[k]) << name << " row " << row << " col " << col + k;
      ++checked;
    }
  }
  EXPECT_EQ(checked, 96);
  // The same values through LlamaWeights (row-major, rows of dims[0]).
  EXPECT_EQ(w.token_embd(0, 0), expected["samples"][0]["values"][0].get<float>());
  EXPECT_EQ(w.layers[12].w_down(17, 1500), expected["samples"][10]["values"][0].get<float>());
}

}  // namespace
}  // namespace kvlab
