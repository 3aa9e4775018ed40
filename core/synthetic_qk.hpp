// Plausible query/key vectors and prefill observations for sources that carry only attention
// mass: the synthetic trace generator and the conformance data.
//
// A real model's mass is softmax(q·K); here the mass comes first, so the vectors are built to
// fit it. Every (chunk, row) gets a random key centre c (about unit norm); step t's query in a
// row is Σ_j w_j c_j over the row's heaviest chunks j at that step, w_j = log(mass_j × chunks)
// (its log-odds against the even share), plus noise. q·c_j then recovers w_j up to cross-talk
// between random centres (about ‖w‖/√dim), so query-aware selection ranks chunks by their mass
// with noise. The query is a function of step t's own mass, which a real system has at step t
// (the query comes before the attention it causes). Per-channel bounds are c ± a random spread,
// the representative key is c plus noise. These vectors test the selection mechanics (budget,
// per-step fetches); how tight real key bounds are is a property of a model, for recorded traces.
#pragma once

#include <cstdint>
#include <vector>

#include "core/attention.hpp"

namespace kvlab {

struct SyntheticKeys {
  int rows = 0;
  int64_t dim = 0;
  int64_t n_chunks = 0;
  std::vector<float> center, min, max, repr;  // n_chunks × rows × dim
};

/// Key summaries for n_chunks chunks of `rows` rows. Deterministic for `seed`.
[[nodiscard]] SyntheticKeys synthetic_chunk_keys(uint64_t seed, int rows, int64_t n_chunks, int64_t dim);

/// Step `step`'s query per row (rows × dim) from that step's mass, as the header describes.
void synthetic_query(const SyntheticKeys& keys, const StepMass& mass, uint64_t seed, int64_t step,
                     std::vector<float>& out);

/// A prefill observation over the first `prompt_chunks` chunks: the first decode step's mass
/// there (the last prompt positions attend much like the first generated one) with
/// multiplicative log-normal noise, renormalised per row. Dense.
void synthetic_prefill_observation(const StepMass& first_step, int64_t prompt_chunks, uint64_t seed, StepMass& out);

}  // namespace kvlab
