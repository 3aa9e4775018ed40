// The CPU decoder (LlamaDecoder, float32, Eigen) behind the live backend's Decoder interface.
#pragma once

#include <memory>

#include "backends/cpu/llama_decoder.hpp"
#include "backends/live/decoder.hpp"

namespace kvlab {

class CpuDecoder final : public Decoder {
 public:
  /// Validates weights and options (InputError/UsageError naming the field).
  CpuDecoder(std::shared_ptr<const LlamaWeights> weights, DecoderOptions options);

  [[nodiscard]] DecoderShape shape() const override;
  [[nodiscard]] int64_t max_context() const override { return decoder_.max_context(); }
  [[nodiscard]] int64_t n_tokens() const override { return decoder_.n_tokens(); }
  [[nodiscard]] int64_t n_complete_chunks() const override { return decoder_.n_complete_chunks(); }
  void prefill(std::span<const int32_t> tokens, DecodeOutput& out) override;
  void step(int32_t token, const StepRequest& request, DecodeOutput& out) override;
  void chunk_features(int64_t chunk, std::span<float> out) const override;
  void chunk_keys(int64_t chunk, std::span<float> key_min, std::span<float> key_max,
                  std::span<float> key_repr) const override;
  /// A copy whose KV cache shares this one's complete chunks (PagedKvCache copies).
  [[nodiscard]] std::unique_ptr<Decoder> fork() const override;

  [[nodiscard]] const LlamaDecoder& llama() const { return decoder_; }

 private:
  LlamaDecoder decoder_;
};

/// Empty CPU decoders over `weights` (shared, never copied).
DecoderFactory cpu_decoder_factory(std::shared_ptr<const LlamaWeights> weights, DecoderOptions options);

}  // namespace kvlab
