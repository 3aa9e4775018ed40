#include "backends/cpu/cpu_decoder.hpp"

#include <algorithm>

#include "core/error.hpp"

namespace kvlab {
namespace {

void copy_out(const StepResult& r, DecodeOutput& out) {
  out.position = r.position;
  out.n_chunks = r.chunk_mass.cols();
  out.logits.assign(r.logits.data(), r.logits.data() + r.logits.size());
  out.chunk_mass.assign(r.chunk_mass.data(), r.chunk_mass.data() + r.chunk_mass.size());  // row-major
  out.summary_mass.assign(r.summary_mass.data(), r.summary_mass.data() + r.summary_mass.size());
  out.full_mass.assign(r.full_mass.data(), r.full_mass.data() + r.full_mass.size());
  out.query_features.assign(r.query_features.data(), r.query_features.data() + r.query_features.size());
  out.query_vectors.assign(r.query_vectors.data(), r.query_vectors.data() + r.query_vectors.size());
  out.prefill_mass.assign(r.prefill_mass.data(), r.prefill_mass.data() + r.prefill_mass.size());
  out.prefill_window = r.prefill_window;
}

}  // namespace

CpuDecoder::CpuDecoder(std::shared_ptr<const LlamaWeights> weights, DecoderOptions options)
    : decoder_(std::move(weights), options) {}

DecoderShape CpuDecoder::shape() const {
  const LlamaConfig& c = decoder_.config();
  return llama_decoder_shape(c, "cpu", decoder_.options().chunk_tokens, decoder_.chunk_feature_size(),
                             decoder_.feature_layers(), c.head_dim);
}

void CpuDecoder::prefill(std::span<const int32_t> tokens, DecodeOutput& out) { copy_out(decoder_.prefill(tokens), out); }

void CpuDecoder::step(int32_t token, const StepRequest& request, DecodeOutput& out) {
  copy_out(decoder_.step(token, request), out);
}

void CpuDecoder::chunk_features(int64_t chunk, std::span<float> out) const {
  const Eigen::VectorXf f = decoder_.chunk_features(chunk);
  if (static_cast<size_t>(f.size()) != out.size()) {
    throw UsageError("cpu decoder: chunk_features wants " + std::to_string(f.size()) + " floats, got room for " +
                     std::to_string(out.size()));
  }
  std::copy(f.data(), f.data() + f.size(), out.begin());
}

void CpuDecoder::chunk_keys(int64_t chunk, std::span<float> key_min, std::span<float> key_max,
                            std::span<float> key_repr) const {
  const LlamaConfig& c = decoder_.config();
  const auto want = static_cast<size_t>(c.n_layers) * c.n_kv_heads * c.head_dim;
  if (key_min.size() != want || key_max.size() != want || key_repr.size() != want) {
    throw UsageError("cpu decoder: chunk_keys wants " + std::to_string(want) + " floats per summary");
  }
  decoder_.chunk_keys(chunk, key_min.data(), key_max.data(), key_repr.data());
}

std::unique_ptr<Decoder> CpuDecoder::fork() const { return std::make_unique<CpuDecoder>(*this); }

DecoderFactory cpu_decoder_factory(std::shared_ptr<const LlamaWeights> weights, DecoderOptions options) {
  return [weights = std::move(weights), options] { return std::make_unique<CpuDecoder>(weights, options); };
}

}  // namespace kvlab
