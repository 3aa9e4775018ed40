// The CPU decoder on the real SmolLM2-135M-Instruct (skipped when the model file is absent:
// scripts/fetch-model.sh fetches it).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "backends/cpu/llama_decoder.hpp"
#include "backends/model/llama_weights.hpp"
#include "backends/model/tokenizer.hpp"

namespace kvlab {
namespace {

struct Model {
  std::shared_ptr<const LlamaWeights> weights;
  std::unique_ptr<Tokenizer> tokenizer;
};

/// Loaded once for the whole suite: dequantising takes about a second.
const Model* model() {
  static const std::unique_ptr<Model> m = []() -> std::unique_ptr<Model> {
    const auto path = default_model_path();
    if (!std::filesystem::exists(path)) return nullptr;
    const GgufFile file = open_model_file(path);
    auto out = std::make_unique<Model>();
    out->weights = std::make_shared<const LlamaWeights>(load_llama(file));
    out->tokenizer = std::make_unique<Tokenizer>(Tokenizer::from_gguf(file));
    return out;
  }();
  return m.get();
}

#define REQUIRE_MODEL()                                                                  \
  if (model() == nullptr) GTEST_SKIP() << "model file absent: run scripts/fetch-model.sh"

int32_t argmax(const Eigen::VectorXf& v) {
  Eigen::Index i = 0;
  v.maxCoeff(&i);
  return static_cast<int32_t>(i);
}

std::string greedy(LlamaDecoder& dec, const Tokenizer& tok, const std::string& prompt, int n_new) {
  const auto ids = tok.encode(prompt);
  StepResult r = dec.prefill(ids);
  std::vector<int32_t> out;
  for (int i = 0; i < n_new; ++i) {
    const int32_t next = argmax(r.logits);
    if (next == tok.eos_id()) break;
    out.push_back(next);
    r = dec.step(next);
  }
  return tok.decode(out, /*skip_special=*/true);
}

TEST(SmolLm2Cpu, GreedyCompletionNamesParis) {
  REQUIRE_MODEL();
  const LlamaWeights& w = *model()->weights;
  EXPECT_TRUE(w.rope_pairs_adjacent);
  EXPECT_EQ(w.config.n_layers, 30);
  EXPECT_EQ(w.config.n_kv_heads, 3);
  LlamaDecoder dec(model()->weights, {});
  const std::string plain = greedy(dec, *model()->tokenizer, "The capital of France is", 8);
  std::cout << "[plain] The capital of France is|" << plain << "|\n";
  EXPECT_NE(plain.find("Paris"), std::string::npos) << plain;

  dec.reset();
  const std::string chat = greedy(
      dec, *model()->tokenizer,
      chat_prompt({{"user", "What is the capital of France?"}}, /*add_generation_prompt=*/true), 16);
  std::cout << "[chat] " << chat << "\n";
  EXPECT_NE(chat.find("Paris"), std::string::npos) << chat;
}

TEST(SmolLm2Cpu, PerplexityOfPlainEnglishIsLow) {
  REQUIRE_MODEL();
  const std::string text =
      "The history of the city goes back more than two thousand years. It was founded on the "
      "banks of a river, where traders met to exchange grain, wine and cloth. Over the "
      "centuries the town grew into a busy port, and its markets drew merchants from across "
      "the country. Today it is known for its old stone bridges, its narrow streets and its "
      "many museums, which attract visitors throughout the year.";
  const auto ids = model()->tokenizer->encode(text);
  LlamaDecoder dec(model()->weights, {});
  RowMatrix logits;
  dec.prefill(ids, &logits);
  double nll = 0;
  for (size_t t = 0; t + 1 < ids.size(); ++t) {
    const auto row = logits.row(static_cast<Eigen::Index>(t)).cast<double>();
    const double m = row.maxCoeff();
    const double lse = m + std::log((row.array() - m).exp().sum());
    nll += lse - row(ids[t + 1]);
  }
  const double ppl = std::exp(nll / static_cast<double>(ids.size() - 1));
  std::cout << "[perplexity] " << ids.size() << " tokens: " << ppl << "\n";
  // A correct 135M model reads this at a perplexity of roughly 10-20; broken RoPE pairing or
  // a wrong norm gives hundreds or more.
  EXPECT_LT(ppl, 30.0);
  EXPECT_GT(ppl, 1.5);

  // Decoding the last tokens one by one reproduces the prefill's logits.
  LlamaDecoder stepwise(model()->weights, {});
  const auto head = std::span(ids).first(ids.size() - 3);
  stepwise.prefill(head);
  for (size_t t = head.size(); t < ids.size(); ++t) {
    const StepResult r = stepwise.step(ids[t]);
    const double err =
        (r.logits - logits.row(static_cast<Eigen::Index>(t)).transpose()).cwiseAbs().maxCoeff();
    EXPECT_LT(err, 1e-2) << "token " << t;
  }
}

}  // namespace
}  // namespace kvlab
