#include "backends/attention/sparse_decode_reference.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "core/error.hpp"

namespace kvlab::attention {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

[[noreturn]] void fail(const std::string& what) {
  throw UsageError("sparse_decode_reference: " + what);
}

void check_kv(const ChunkedKv& kv, int head_dim, bool need_pointers_of_all,
              std::span<const int64_t> attended) {
  if (kv.values.size() != kv.keys.size()) {
    fail("kv.values has " + std::to_string(kv.values.size()) + " chunks, kv.keys " +
         std::to_string(kv.keys.size()));
  }
  if (kv.chunk_tokens < 1) fail("kv.chunk_tokens must be positive");
  if (kv.n_chunks() > 0 && (kv.last_chunk_tokens < 1 || kv.last_chunk_tokens > kv.chunk_tokens)) {
    fail("kv.last_chunk_tokens " + std::to_string(kv.last_chunk_tokens) + " must be in 1.." +
         std::to_string(kv.chunk_tokens));
  }
  if (kv.token_stride < head_dim) {
    fail("kv.token_stride " + std::to_string(kv.token_stride) + " is below head_dim " +
         std::to_string(head_dim));
  }
  for (size_t i = 0; i < attended.size(); ++i) {
    const int64_t c = attended[i];
    if (c < 0 || c >= kv.n_chunks()) {
      fail("attended[" + std::to_string(i) + "] = " + std::to_string(c) + " is outside 0.." +
           std::to_string(kv.n_chunks() - 1));
    }
    if (i > 0 && c <= attended[i - 1]) {
      fail("attended[" + std::to_string(i) + "] = " + std::to_string(c) +
           " does not follow attended[" + std::to_string(i - 1) + "] = " +
           std::to_string(attended[i - 1]) + " (ids must be strictly increasing)");
    }
  }
  auto check_chunk = [&](int64_t c) {
    if (kv.keys[static_cast<size_t>(c)] == nullptr || kv.values[static_cast<size_t>(c)] == nullptr) {
      fail("kv chunk " + std::to_string(c) + " has a null key or value pointer");
    }
  };
  if (need_pointers_of_all) {
    for (int64_t c = 0; c < kv.n_chunks(); ++c) check_chunk(c);
  } else {
    for (const int64_t c : attended) check_chunk(c);
  }
}

void check_summaries(const SummaryEntries& s, int head_dim) {
  if (s.n < 0) fail("summaries.n must not be negative");
  if (s.n == 0) return;
  if (s.keys == nullptr || s.values == nullptr || s.counts == nullptr) {
    fail("summaries has " + std::to_string(s.n) + " entries but a null keys/values/counts pointer");
  }
  if (s.stride < head_dim) {
    fail("summaries.stride " + std::to_string(s.stride) + " is below head_dim " +
         std::to_string(head_dim));
  }
  for (int64_t i = 0; i < s.n; ++i) {
    if (s.counts[i] < 1) {
      fail("summaries.counts[" + std::to_string(i) + "] = " + std::to_string(s.counts[i]) +
           " must be at least 1");
    }
  }
}

void check(const SparseDecodeInputs& in, const SparseDecodeOutputs& out) {
  if (in.query == nullptr) fail("query is null");
  if (out.out == nullptr) fail("out is null");
  if (in.group < 1) fail("group " + std::to_string(in.group) + " must be positive");
  if (in.head_dim < 1) fail("head_dim " + std::to_string(in.head_dim) + " must be positive");
  if (!std::isfinite(in.scale)) fail("scale is not finite");
  check_kv(in.kv, in.head_dim, out.full_mass != nullptr, in.attended);
  check_summaries(in.summaries, in.head_dim);
  if (in.attended.empty() && in.summaries.n == 0) {
    fail("nothing to attend: no attended chunk and no summary entry");
  }
}

float dot(const float* a, const float* b, int n) {
  float s = 0.0F;
  for (int d = 0; d < n; ++d) s += a[d] * b[d];
  return s;
}

/// Scores of one query head (already multiplied by the scale) against chunk c's tokens.
void score_chunk(const ChunkedKv& kv, int64_t c, const float* q_scaled, int head_dim,
                 float* scores) {
  const float* k = kv.keys[static_cast<size_t>(c)];
  for (int t = 0; t < kv.tokens(c); ++t) scores[t] = dot(q_scaled, k + t * kv.token_stride, head_dim);
}

}  // namespace

void sparse_decode_reference(const SparseDecodeInputs& in, const SparseDecodeOutputs& out) {
  check(in, out);
  const ChunkedKv& kv = in.kv;
  const int hd = in.head_dim;
  const int ct = kv.chunk_tokens;
  const int64_t n_chunks = kv.n_chunks();
  const SummaryEntries& sums = in.summaries;
  const bool need_all = out.full_mass != nullptr;
  const float inv_group = 1.0F / static_cast<float>(in.group);

  std::vector<char> is_attended(static_cast<size_t>(n_chunks), 0);
  for (const int64_t c : in.attended) is_attended[static_cast<size_t>(c)] = 1;

  if (out.chunk_mass != nullptr) std::fill_n(out.chunk_mass, n_chunks, 0.0F);
  if (out.full_mass != nullptr) std::fill_n(out.full_mass, n_chunks, 0.0F);
  if (out.summary_mass != nullptr) *out.summary_mass = 0.0F;

  // Per head: scores by position (chunk c's token t at c·ct + t), then probabilities in place.
  std::vector<float> scores(static_cast<size_t>(n_chunks * ct));
  std::vector<float> probs(scores.size());
  std::vector<float> q_scaled(static_cast<size_t>(hd));
  std::vector<float> sp(static_cast<size_t>(sums.n));
  std::vector<float> head_mass(static_cast<size_t>(n_chunks));
  std::vector<float> head_full(need_all ? static_cast<size_t>(n_chunks) : 0);
  for (int h = 0; h < in.group; ++h) {
    const float* q = in.query + static_cast<ptrdiff_t>(h) * hd;
    for (int d = 0; d < hd; ++d) q_scaled[static_cast<size_t>(d)] = q[d] * in.scale;
    float m = kNegInf;
    for (int64_t i = 0; i < sums.n; ++i) {
      sp[static_cast<size_t>(i)] = in.scale * dot(q, sums.keys + i * sums.stride, hd) +
                                   static_cast<float>(std::log(static_cast<double>(sums.counts[i])));
      m = std::max(m, sp[static_cast<size_t>(i)]);
    }
    float m_all = kNegInf;
    for (int64_t c = 0; c < n_chunks; ++c) {
      const bool in_set = is_attended[static_cast<size_t>(c)] != 0;
      if (!in_set && !need_all) continue;
      float* s = scores.data() + c * ct;
      score_chunk(kv, c, q_scaled.data(), hd, s);
      const float cm = *std::max_element(s, s + kv.tokens(c));
      if (in_set) m = std::max(m, cm);
      m_all = std::max(m_all, cm);
    }

    // Restricted softmax: exponentials, then one normalisation (double denominator).
    double denom = 0.0;
    std::fill(head_mass.begin(), head_mass.end(), 0.0F);
    for (const int64_t c : in.attended) {
      const float* s = scores.data() + c * ct;
      float* p = probs.data() + c * ct;
      float chunk_sum = 0.0F;
      for (int t = 0; t < kv.tokens(c); ++t) {
        p[t] = std::exp(s[t] - m);
        chunk_sum += p[t];
      }
      head_mass[static_cast<size_t>(c)] = chunk_sum;
      denom += chunk_sum;
    }
    float summary_sum = 0.0F;
    for (float& e : sp) {
      e = std::exp(e - m);
      summary_sum += e;
    }
    denom += summary_sum;
    const auto inv = static_cast<float>(1.0 / denom);

    // Output: Σ p·v over attended tokens, then Σ pᵢ·v̄ᵢ over summaries.
    float* o = out.out + static_cast<ptrdiff_t>(h) * hd;
    std::fill_n(o, hd, 0.0F);
    for (const int64_t c : in.attended) {
      const float* v = kv.values[static_cast<size_t>(c)];
      const float* p = probs.data() + c * ct;
      for (int t = 0; t < kv.tokens(c); ++t) {
        const float pt = p[t] * inv;
        const float* vt = v + t * kv.token_stride;
        for (int d = 0; d < hd; ++d) o[d] += pt * vt[d];
      }
    }
    float head_summary = 0.0F;
    for (int64_t i = 0; i < sums.n; ++i) {
      const float pi = sp[static_cast<size_t>(i)] * inv;
      head_summary += pi;
      const float* v = sums.values + i * sums.stride;
      for (int d = 0; d < hd; ++d) o[d] += pi * v[d];
    }

    // Reports average the group's heads.
    if (out.chunk_mass != nullptr) {
      for (const int64_t c : in.attended) {
        out.chunk_mass[c] += head_mass[static_cast<size_t>(c)] * inv * inv_group;
      }
    }
    if (out.summary_mass != nullptr) *out.summary_mass += head_summary * inv_group;
    if (need_all) {
      double denom_all = 0.0;
      for (int64_t c = 0; c < n_chunks; ++c) {
        const float* s = scores.data() + c * ct;
        float chunk_sum = 0.0F;
        for (int t = 0; t < kv.tokens(c); ++t) chunk_sum += std::exp(s[t] - m_all);
        head_full[static_cast<size_t>(c)] = chunk_sum;
        denom_all += chunk_sum;
      }
      const auto inv_all = static_cast<float>(1.0 / denom_all);
      for (int64_t c = 0; c < n_chunks; ++c) {
        out.full_mass[c] += head_full[static_cast<size_t>(c)] * inv_all * inv_group;
      }
    }
  }
}

OwnedSummaries summarize_unattended(const ChunkedKv& kv, const ChunkSums& sums, int head_dim,
                                    std::span<const int64_t> attended, int chunks_per_summary) {
  if (chunks_per_summary < 1) {
    throw UsageError("summarize_unattended: chunks_per_summary " +
                     std::to_string(chunks_per_summary) + " must be positive");
  }
  if (head_dim < 1) throw UsageError("summarize_unattended: head_dim must be positive");
  const int64_t n_chunks = kv.n_chunks();
  if (static_cast<int64_t>(sums.key_sums.size()) != n_chunks ||
      static_cast<int64_t>(sums.value_sums.size()) != n_chunks) {
    throw UsageError("summarize_unattended: sums cover " + std::to_string(sums.key_sums.size()) +
                     "/" + std::to_string(sums.value_sums.size()) + " chunks, kv " +
                     std::to_string(n_chunks));
  }
  std::vector<char> is_attended(static_cast<size_t>(n_chunks), 0);
  for (const int64_t c : attended) {
    if (c < 0 || c >= n_chunks) {
      throw UsageError("summarize_unattended: attended chunk " + std::to_string(c) +
                       " is outside 0.." + std::to_string(n_chunks - 1));
    }
    is_attended[static_cast<size_t>(c)] = 1;
  }
  OwnedSummaries out;
  out.head_dim = head_dim;
  std::vector<float> key(static_cast<size_t>(head_dim)), value(static_cast<size_t>(head_dim));
  for (int64_t first = 0; first < n_chunks; first += chunks_per_summary) {
    std::fill(key.begin(), key.end(), 0.0F);
    std::fill(value.begin(), value.end(), 0.0F);
    int64_t count = 0;
    for (int64_t c = first; c < std::min(first + chunks_per_summary, n_chunks); ++c) {
      if (is_attended[static_cast<size_t>(c)] != 0) continue;
      const float* ks = sums.key_sums[static_cast<size_t>(c)];
      const float* vs = sums.value_sums[static_cast<size_t>(c)];
      for (int d = 0; d < head_dim; ++d) {
        key[static_cast<size_t>(d)] += ks[d];
        value[static_cast<size_t>(d)] += vs[d];
      }
      count += kv.tokens(c);
    }
    if (count == 0) continue;
    const auto n = static_cast<float>(count);
    for (int d = 0; d < head_dim; ++d) {
      out.keys.push_back(key[static_cast<size_t>(d)] / n);
      out.values.push_back(value[static_cast<size_t>(d)] / n);
    }
    out.counts.push_back(count);
  }
  return out;
}

}  // namespace kvlab::attention
