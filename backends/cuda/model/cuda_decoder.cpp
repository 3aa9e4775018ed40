#include "backends/cuda/model/cuda_decoder.hpp"

#include <algorithm>
#include <chrono>
#include <vector>

#include "core/error.hpp"

namespace kvlab::cuda {

namespace {

void copy_out(CudaStepOutput&& in, DecodeOutput& out) {
  out.position = in.position;
  out.n_chunks = in.n_chunks;
  out.logits = std::move(in.logits);
  out.chunk_mass = std::move(in.chunk_mass);
  out.summary_mass = std::move(in.summary_mass);
  out.full_mass = std::move(in.full_mass);
  out.query_features = std::move(in.query_features);
  out.query_vectors = std::move(in.query_vectors);
  out.prefill_mass = std::move(in.prefill_mass);
  out.prefill_window = in.prefill_window;
}

void copy_timing(const CudaStepTiming& timing, int batch, DecodeOutput& out) {
  out.attention_ms = timing.attention_ms;
  out.pass_ms = timing.total_ms;
  out.batch = batch;
  out.stall_ms = 0;  // every chunk of every sequence stays in the device's KV pool
}

}  // namespace

// ---- the shared decoder ------------------------------------------------------------------

SharedCudaDecoder::SharedCudaDecoder(std::unique_ptr<CudaLlamaDecoder> decoder)
    : decoder_(std::move(decoder)),
      coalescer_([this](const std::vector<CudaStepInput>& inputs) { return run_pass(inputs); }) {}

std::vector<BatchedStep> SharedCudaDecoder::run_pass(const std::vector<CudaStepInput>& inputs) {
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<CudaStepOutput> outs = decoder_->step(inputs);
  pass_wall_ms_ += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  const CudaStepTiming& timing = decoder_->last_timing();
  attention_ms_ += timing.attention_ms;
  pass_ms_ += timing.total_ms;
  host_prepare_ms_ += timing.host_prepare_ms;
  host_launch_ms_ += timing.host_launch_ms;
  host_wait_ms_ += timing.host_wait_ms;
  host_unpack_ms_ += timing.host_unpack_ms;
  std::vector<BatchedStep> steps(outs.size());
  for (size_t i = 0; i < outs.size(); ++i) {
    steps[i].output = std::move(outs[i]);
    steps[i].timing = timing;
    steps[i].batch = static_cast<int>(outs.size());
  }
  return steps;
}

CoalescerStats SharedCudaDecoder::stats() const {
  const CoalescerCounts counts = coalescer_.counts();
  const std::lock_guard lock(coalescer_.mutex());
  CoalescerStats s;
  s.passes = counts.batches;
  s.sequence_steps = counts.steps;
  s.max_batch = counts.max_batch;
  s.attention_ms = attention_ms_;
  s.pass_ms = pass_ms_;
  s.pass_wall_ms = pass_wall_ms_;
  s.host_prepare_ms = host_prepare_ms_;
  s.host_launch_ms = host_launch_ms_;
  s.host_wait_ms = host_wait_ms_;
  s.host_unpack_ms = host_unpack_ms_;
  return s;
}

// ---- one sequence -------------------------------------------------------------------------

CudaDecoder::CudaDecoder(std::shared_ptr<SharedCudaDecoder> shared, SequenceId sequence)
    : shared_(std::move(shared)), sequence_(sequence) {}

CudaDecoder::~CudaDecoder() {
  if (submitted_) shared_->withdraw(sequence_);
  shared_->with_decoder([&](CudaLlamaDecoder& d) { d.close(sequence_); });
}

DecoderShape CudaDecoder::shape() const {
  const CudaLlamaDecoder& d = shared_->unlocked();
  return llama_decoder_shape(d.config(), "cuda", d.options().chunk_tokens, d.chunk_feature_size(), d.feature_layers(),
                             d.qk_dim());
}

int64_t CudaDecoder::max_context() const { return shared_->unlocked().max_context(); }

int64_t CudaDecoder::n_tokens() const {
  return shared_->with_decoder([&](const CudaLlamaDecoder& d) { return d.n_tokens(sequence_); });
}

int64_t CudaDecoder::n_complete_chunks() const {
  return shared_->with_decoder([&](const CudaLlamaDecoder& d) { return d.n_complete_chunks(sequence_); });
}

void CudaDecoder::prefill(std::span<const int32_t> tokens, DecodeOutput& out) {
  shared_->with_decoder([&](CudaLlamaDecoder& d) {
    copy_out(d.prefill(sequence_, tokens), out);
    copy_timing(d.last_timing(), 1, out);
  });
}

void CudaDecoder::step(int32_t token, const StepRequest& request, DecodeOutput& out) {
  submit(token, request);
  collect(out);
}

void CudaDecoder::submit(int32_t token, const StepRequest& request) {
  shared_->submit(sequence_, CudaStepInput{sequence_, token, request});
  submitted_ = true;
}

void CudaDecoder::collect(DecodeOutput& out) {
  if (!submitted_) throw UsageError("cuda decoder: collect() without a submitted step");
  submitted_ = false;
  BatchedStep step = shared_->collect(sequence_);
  copy_out(std::move(step.output), out);
  copy_timing(step.timing, step.batch, out);
}

void CudaDecoder::chunk_features(int64_t chunk, std::span<float> out) const {
  const std::vector<float> f =
      shared_->with_decoder([&](const CudaLlamaDecoder& d) { return d.chunk_features(sequence_, chunk); });
  std::copy_n(f.begin(), std::min(f.size(), out.size()), out.begin());
}

void CudaDecoder::chunk_keys(int64_t chunk, std::span<float> key_min, std::span<float> key_max,
                             std::span<float> key_repr) const {
  const CudaLlamaDecoder& u = shared_->unlocked();
  const auto per = static_cast<size_t>(u.config().n_layers) * u.config().n_kv_heads * u.qk_dim();
  if (per == 0) throw UsageError("cuda decoder: chunk_keys without query_keys (the decoder reports no key summaries)");
  if (key_min.size() != per || key_max.size() != per || key_repr.size() != per) {
    throw UsageError("cuda decoder: chunk_keys wants " + std::to_string(per) + " floats per summary");
  }
  if (chunk < keys_first_ || chunk >= keys_first_ + keys_count_) {
    // Sessions ask for chunks in order as they complete: fetch every complete one from here on.
    shared_->with_decoder([&](const CudaLlamaDecoder& d) {
      const int64_t count = std::max<int64_t>(d.n_complete_chunks(sequence_) - chunk, 1);
      keys_ = d.chunk_keys(sequence_, chunk, count);
      keys_first_ = chunk;
      keys_count_ = count;
    });
  }
  const auto at = static_cast<std::ptrdiff_t>(static_cast<size_t>(chunk - keys_first_) * per);
  std::copy_n(keys_.min.begin() + at, per, key_min.begin());
  std::copy_n(keys_.max.begin() + at, per, key_max.begin());
  std::copy_n(keys_.repr.begin() + at, per, key_repr.begin());
}

std::unique_ptr<Decoder> CudaDecoder::fork() const {
  const SequenceId id = shared_->with_decoder([&](CudaLlamaDecoder& d) { return d.fork(sequence_); });
  return std::make_unique<CudaDecoder>(shared_, id);
}

CudaDecoderOptions cuda_options_of(const DecoderOptions& options) {
  CudaDecoderOptions o;
  o.chunk_tokens = options.chunk_tokens;
  o.feature_layer = options.feature_layer;
  o.extra_feature_layers = options.extra_feature_layers;
  o.chunk_feature_source = options.chunk_feature_source;
  o.rope_scaling = options.rope_scaling;
  o.query_keys = options.query_keys;
  o.prefill_window = options.prefill_window;
  return o;
}

CudaDecoderSet cuda_decoder_set(std::shared_ptr<const LlamaWeights> weights, const CudaDecoderOptions& options) {
  auto shared = std::make_shared<SharedCudaDecoder>(std::make_unique<CudaLlamaDecoder>(std::move(weights), options));
  CudaDecoderSet set;
  set.shared = shared;
  set.factory = [shared]() -> std::unique_ptr<Decoder> {
    const SequenceId id = shared->with_decoder([](CudaLlamaDecoder& d) { return d.open(); });
    return std::make_unique<CudaDecoder>(shared, id);
  };
  return set;
}

DecoderFactory cuda_decoder_factory(std::shared_ptr<const LlamaWeights> weights, const CudaDecoderOptions& options) {
  return cuda_decoder_set(std::move(weights), options).factory;
}

}  // namespace kvlab::cuda
