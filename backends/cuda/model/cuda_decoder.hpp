// The GPU decoder behind the live backend's Decoder interface (backends/live/decoder.hpp):
// each Decoder is one sequence of a CudaLlamaDecoder that all decoders of one factory share
// (one copy of the weights and one KV pool on the device); fork() opens a sequence that
// shares the parent's complete chunks. Calls into the shared decoder are serialised.
#pragma once

#include <memory>
#include <mutex>

#include "backends/cuda/model/cuda_llama_decoder.hpp"
#include "backends/live/decoder.hpp"

namespace kvlab::cuda {

/// The shared device decoder and the lock that serialises its use.
struct SharedCudaDecoder {
  std::mutex mutex;
  std::unique_ptr<CudaLlamaDecoder> decoder;
};

class CudaDecoder final : public Decoder {
 public:
  CudaDecoder(std::shared_ptr<SharedCudaDecoder> shared, SequenceId sequence);
  ~CudaDecoder() override;
  CudaDecoder(const CudaDecoder&) = delete;
  CudaDecoder& operator=(const CudaDecoder&) = delete;

  [[nodiscard]] DecoderShape shape() const override;
  [[nodiscard]] int64_t max_context() const override;
  [[nodiscard]] int64_t n_tokens() const override;
  [[nodiscard]] int64_t n_complete_chunks() const override;
  void prefill(std::span<const int32_t> tokens, DecodeOutput& out) override;
  void step(int32_t token, const StepRequest& request, DecodeOutput& out) override;
  void chunk_features(int64_t chunk, std::span<float> out) const override;
  [[nodiscard]] std::unique_ptr<Decoder> fork() const override;

 private:
  std::shared_ptr<SharedCudaDecoder> shared_;
  SequenceId sequence_;
};

/// CudaDecoderOptions from the live backend's DecoderOptions (chunking, feature layer and
/// source, rope scaling); everything else keeps its default.
[[nodiscard]] CudaDecoderOptions cuda_options_of(const DecoderOptions& options);

/// Empty GPU decoders over `weights`, all sharing one CudaLlamaDecoder created here (throws
/// CudaError with a one-line reason when there is no sm_90 GPU).
DecoderFactory cuda_decoder_factory(std::shared_ptr<const LlamaWeights> weights, const CudaDecoderOptions& options);

}  // namespace kvlab::cuda
