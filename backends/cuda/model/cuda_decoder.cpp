#include "backends/cuda/model/cuda_decoder.hpp"

#include <algorithm>

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
}

}  // namespace

CudaDecoder::CudaDecoder(std::shared_ptr<SharedCudaDecoder> shared, SequenceId sequence)
    : shared_(std::move(shared)), sequence_(sequence) {}

CudaDecoder::~CudaDecoder() {
  const std::lock_guard lock(shared_->mutex);
  shared_->decoder->close(sequence_);
}

DecoderShape CudaDecoder::shape() const {
  const CudaLlamaDecoder& d = *shared_->decoder;
  const LlamaConfig& c = d.config();
  DecoderShape s;
  s.device = "cuda";
  s.model = c.name;
  s.n_layers = c.n_layers;
  s.n_kv_heads = c.n_kv_heads;
  s.head_dim = c.head_dim;
  s.hidden = c.hidden;
  s.vocab = c.vocab;
  s.chunk_tokens = d.options().chunk_tokens;
  s.chunk_feature_size = d.chunk_feature_size();
  return s;
}

int64_t CudaDecoder::max_context() const { return shared_->decoder->max_context(); }

int64_t CudaDecoder::n_tokens() const {
  const std::lock_guard lock(shared_->mutex);
  return shared_->decoder->n_tokens(sequence_);
}

int64_t CudaDecoder::n_complete_chunks() const {
  const std::lock_guard lock(shared_->mutex);
  return shared_->decoder->n_complete_chunks(sequence_);
}

void CudaDecoder::prefill(std::span<const int32_t> tokens, DecodeOutput& out) {
  const std::lock_guard lock(shared_->mutex);
  copy_out(shared_->decoder->prefill(sequence_, tokens), out);
}

void CudaDecoder::step(int32_t token, const StepRequest& request, DecodeOutput& out) {
  const std::lock_guard lock(shared_->mutex);
  const CudaStepInput in{sequence_, token, request};
  copy_out(std::move(shared_->decoder->step(std::span<const CudaStepInput>(&in, 1)).at(0)), out);
}

void CudaDecoder::chunk_features(int64_t chunk, std::span<float> out) const {
  const std::lock_guard lock(shared_->mutex);
  const std::vector<float> f = shared_->decoder->chunk_features(sequence_, chunk);
  std::copy_n(f.begin(), std::min(f.size(), out.size()), out.begin());
}

std::unique_ptr<Decoder> CudaDecoder::fork() const {
  const std::lock_guard lock(shared_->mutex);
  return std::make_unique<CudaDecoder>(shared_, shared_->decoder->fork(sequence_));
}

CudaDecoderOptions cuda_options_of(const DecoderOptions& options) {
  CudaDecoderOptions o;
  o.chunk_tokens = options.chunk_tokens;
  o.feature_layer = options.feature_layer;
  o.chunk_feature_source = options.chunk_feature_source;
  o.rope_scaling = options.rope_scaling;
  return o;
}

DecoderFactory cuda_decoder_factory(std::shared_ptr<const LlamaWeights> weights, const CudaDecoderOptions& options) {
  auto shared = std::make_shared<SharedCudaDecoder>();
  shared->decoder = std::make_unique<CudaLlamaDecoder>(std::move(weights), options);
  return [shared]() -> std::unique_ptr<Decoder> {
    SequenceId id = 0;
    {
      const std::lock_guard lock(shared->mutex);
      id = shared->decoder->open();
    }
    return std::make_unique<CudaDecoder>(shared, id);
  };
}

}  // namespace kvlab::cuda
