// The GPU decoder behind the live backend's Decoder interface (backends/live/decoder.hpp):
// each Decoder is one sequence of a CudaLlamaDecoder that all decoders of one factory share
// (one copy of the weights and one KV pool on the device); fork() opens a sequence that
// shares the parent's complete chunks. Calls into the shared decoder are serialised.
//
// Batching: submit() queues a sequence's step with the factory's StepCoalescer and collect()
// waits for it. The coalescer runs one CudaLlamaDecoder::step over every queued step once
// every thread of its StepGroup is waiting in collect() (or has left the group), so the steps
// of all requests in flight, and of every policy of each request, share one forward pass.
// Which steps share a pass depends on timing, but not what each sequence computes: the
// decoder's matrix products run over fixed row blocks (CudaDecoderOptions::gemm_row_block)
// and everything else is per sequence.
#pragma once

#include <memory>
#include <mutex>
#include <vector>

#include "backends/cuda/model/cuda_llama_decoder.hpp"
#include "backends/live/decoder.hpp"
#include "backends/live/step_coalescer.hpp"

namespace kvlab::cuda {

/// Totals over the batched passes the shared decoder ran (for throughput reports).
struct CoalescerStats {
  int64_t passes = 0;
  int64_t sequence_steps = 0;  // steps served (sum of batch sizes)
  int max_batch = 0;
  double attention_ms = 0;  // device time, summed over passes
  double pass_ms = 0;
  double pass_wall_ms = 0;  // host time of the passes (uploads, downloads and unpacking included)
  // pass_wall_ms split as CudaStepTiming splits a step's host time, summed over passes
  double host_prepare_ms = 0, host_launch_ms = 0, host_wait_ms = 0, host_unpack_ms = 0;
};

/// One sequence's result of a batched pass.
struct BatchedStep {
  CudaStepOutput output;
  CudaStepTiming timing;  // the whole pass
  int batch = 0;          // sequences in the pass
};

/// The shared device decoder, the lock that serialises its use (the coalescer's) and the
/// batching of steps (backends/live/step_coalescer.hpp). Its StepGroup is the coalescer's.
class SharedCudaDecoder {
 public:
  explicit SharedCudaDecoder(std::unique_ptr<CudaLlamaDecoder> decoder);

  [[nodiscard]] StepGroup& group() { return coalescer_; }
  void submit(SequenceId sequence, const CudaStepInput& input) { coalescer_.submit(sequence, input); }
  BatchedStep collect(SequenceId sequence) { return coalescer_.collect(sequence); }
  void withdraw(SequenceId sequence) { coalescer_.withdraw(sequence); }
  [[nodiscard]] CoalescerStats stats() const;

  /// Runs `fn(decoder)` under the lock.
  template <class Fn>
  decltype(auto) with_decoder(Fn&& fn) {
    const std::lock_guard lock(coalescer_.mutex());
    return fn(*decoder_);
  }
  template <class Fn>
  decltype(auto) with_decoder(Fn&& fn) const {
    const std::lock_guard lock(coalescer_.mutex());
    return fn(static_cast<const CudaLlamaDecoder&>(*decoder_));
  }
  /// Immutable facts (config, options, sizes) need no lock.
  [[nodiscard]] const CudaLlamaDecoder& unlocked() const { return *decoder_; }

 private:
  std::vector<BatchedStep> run_pass(const std::vector<CudaStepInput>& inputs);

  std::unique_ptr<CudaLlamaDecoder> decoder_;
  StepCoalescer<CudaStepInput, BatchedStep> coalescer_;
  double attention_ms_ = 0, pass_ms_ = 0, pass_wall_ms_ = 0;  // guarded by the coalescer's lock
  double host_prepare_ms_ = 0, host_launch_ms_ = 0, host_wait_ms_ = 0, host_unpack_ms_ = 0;  // likewise
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
  void chunk_keys(int64_t chunk, std::span<float> key_min, std::span<float> key_max,
                  std::span<float> key_repr) const override;
  [[nodiscard]] std::unique_ptr<Decoder> fork() const override;
  [[nodiscard]] bool batches_steps() const override { return true; }
  void submit(int32_t token, const StepRequest& request) override;
  void collect(DecodeOutput& out) override;

 private:
  std::shared_ptr<SharedCudaDecoder> shared_;
  SequenceId sequence_;
  bool submitted_ = false;
  // Key summaries of complete chunks [keys_first_, keys_first_ + keys_count_), fetched together
  // (a complete chunk never changes).
  mutable CudaChunkKeys keys_;
  mutable int64_t keys_first_ = 0, keys_count_ = 0;
};

/// CudaDecoderOptions from the live backend's DecoderOptions (chunking, feature layer and
/// source, rope scaling, the policy inputs: query_keys, prefill_window); everything else keeps
/// its default.
[[nodiscard]] CudaDecoderOptions cuda_options_of(const DecoderOptions& options);

/// A factory of GPU decoders and the shared decoder behind them (its StepGroup and stats).
struct CudaDecoderSet {
  DecoderFactory factory;
  std::shared_ptr<SharedCudaDecoder> shared;
};

/// Empty GPU decoders over `weights`, all sharing one CudaLlamaDecoder created here (throws
/// CudaError with a one-line reason when there is no sm_90 GPU).
CudaDecoderSet cuda_decoder_set(std::shared_ptr<const LlamaWeights> weights, const CudaDecoderOptions& options);
DecoderFactory cuda_decoder_factory(std::shared_ptr<const LlamaWeights> weights, const CudaDecoderOptions& options);

}  // namespace kvlab::cuda
