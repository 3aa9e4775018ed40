// SyntheticConfig: validation of every field, and the geometry it resolves to.
#include "traces/synthetic_detail.hpp"

#include <cmath>
#include <string>

#include "core/error.hpp"

namespace kvlab {

using namespace synthetic_detail;

void SyntheticConfig::validate() const {
  auto fail = [](const std::string& field, const std::string& why) {
    throw UsageError("synthetic trace: " + field + " " + why);
  };
  if (context_tokens < 1) fail("--context-tokens", "must be at least 1, got " + std::to_string(context_tokens));
  if (steps < 1) fail("--steps", "must be at least 1, got " + std::to_string(steps));
  if (requests < 1) fail("--requests", "must be at least 1, got " + std::to_string(requests));
  if (chunk_tokens < 1) fail("--chunk-tokens", "must be at least 1, got " + std::to_string(chunk_tokens));
  if (d_query < 1) fail("--d-query", "must be at least 1, got " + std::to_string(d_query));
  if (d_key < 1) fail("--d-key", "must be at least 1, got " + std::to_string(d_key));
  if (qk_dim < 0 || qk_dim > 4096) fail("--qk-dim", "must be between 0 and 4096, got " + std::to_string(qk_dim));
  if (prefill_window < 0 || prefill_window > context_tokens) {
    fail("--prefill-window", "must be between 0 and --context-tokens, got " + std::to_string(prefill_window));
  }
  if (!(feature_noise >= 0.0) || !std::isfinite(feature_noise)) {
    fail("--feature-noise", "must be a finite value >= 0");
  }
  try {
    geometry.validate("synthetic trace geometry");
  } catch (const InputError& e) {
    throw UsageError(e.what());
  }
  if (heads_stored != 1 && heads_stored != geometry.n_kv_heads) {
    fail("--heads-stored", "must be 1 (aggregated) or n_kv_heads = " +
                               std::to_string(geometry.n_kv_heads) + ", got " + std::to_string(heads_stored));
  }
  const int64_t chunks = (context_tokens + steps + chunk_tokens - 1) / chunk_tokens;
  if (chunks > (int64_t{1} << 31)) fail("--context", "gives more than 2^31 chunks");
}

Geometry SyntheticConfig::resolved_geometry() const {
  Geometry g = geometry;
  g.chunk_tokens = chunk_tokens;
  return g;
}

}  // namespace kvlab
