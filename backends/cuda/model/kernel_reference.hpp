// CPU references of the GPU decoder's kernels (llama_kernels.hpp, attention_kernels.hpp), in
// float or double, written for clarity: the gpu tests compare each kernel against these on
// random inputs. Plain C++ (no CUDA), row-major vectors.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace kvlab::cuda::reference {

inline std::vector<float> rms_norm(const std::vector<float>& x, const std::vector<float>& weight, int n, int hidden,
                                   float eps) {
  std::vector<float> out(x.size());
  for (int r = 0; r < n; ++r) {
    double ss = 0;
    for (int i = 0; i < hidden; ++i) ss += static_cast<double>(x[r * hidden + i]) * x[r * hidden + i];
    const double inv = 1.0 / std::sqrt(ss / hidden + eps);
    for (int i = 0; i < hidden; ++i) {
      out[r * hidden + i] = static_cast<float>(x[r * hidden + i] * inv * weight[i]);
    }
  }
  return out;
}

/// The rotation of LlamaDecoder::rope_rows on the Q heads and the K heads of each row.
inline void rope(std::vector<float>& x, int64_t row_stride, int n, int q_heads, int64_t k_offset, int k_heads,
                 int head_dim, bool pairs_adjacent, const std::vector<int64_t>& positions,
                 const std::vector<double>& inv_freq, double position_scale) {
  const int half = head_dim / 2;
  for (int r = 0; r < n; ++r) {
    for (int i = 0; i < half; ++i) {
      const double angle = static_cast<double>(positions[r]) * position_scale * inv_freq[i];
      const auto c = static_cast<float>(std::cos(angle));
      const auto s = static_cast<float>(std::sin(angle));
      auto turn = [&](int64_t head0) {
        float& a = x[head0 + (pairs_adjacent ? 2 * i : i)];
        float& b = x[head0 + (pairs_adjacent ? 2 * i + 1 : i + half)];
        const float a0 = a;
        a = a0 * c - b * s;
        b = a0 * s + b * c;
      };
      for (int h = 0; h < q_heads; ++h) turn(r * row_stride + static_cast<int64_t>(h) * head_dim);
      for (int h = 0; h < k_heads; ++h) turn(r * row_stride + k_offset + static_cast<int64_t>(h) * head_dim);
    }
  }
}

inline std::vector<float> swiglu(const std::vector<float>& gate_up, int n, int ffn) {
  std::vector<float> out(static_cast<size_t>(n) * ffn);
  for (int r = 0; r < n; ++r) {
    for (int j = 0; j < ffn; ++j) {
      const float g = gate_up[static_cast<size_t>(r) * 2 * ffn + j];
      const float u = gate_up[static_cast<size_t>(r) * 2 * ffn + ffn + j];
      out[static_cast<size_t>(r) * ffn + j] = g / (1.0F + std::exp(-g)) * u;
    }
  }
  return out;
}

/// Lowest index of the maximum.
inline int32_t argmax(const float* row, int vocab) {
  return static_cast<int32_t>(std::max_element(row, row + vocab) - row);
}

/// Inversion sampling as LiveBackend does it: the first i where the running sum of
/// exp((l - max) / T) passes u·Z; the argmax when rounding leaves u unspent.
inline int32_t sample(const float* row, int vocab, double temperature, double u) {
  if (!(temperature > 0)) return argmax(row, vocab);
  const double m = *std::max_element(row, row + vocab);
  double z = 0;
  for (int i = 0; i < vocab; ++i) z += std::exp((row[i] - m) / temperature);
  double left = u * z;
  for (int i = 0; i < vocab; ++i) {
    left -= std::exp((row[i] - m) / temperature);
    if (left < 0) return i;
  }
  return argmax(row, vocab);
}

/// One query head against a list of keys with optional extra entries (summaries):
/// out = Σ p_j v_j with p = softmax(q·k_j / sqrt(d) + bias_j), in double.
struct AttentionEntry {
  const float* key;
  const float* value;
  double bias = 0;
};
inline std::vector<double> attend(const float* q, int head_dim, const std::vector<AttentionEntry>& entries,
                                  std::vector<double>* probs = nullptr) {
  std::vector<double> s(entries.size());
  double m = -std::numeric_limits<double>::infinity();
  for (size_t j = 0; j < entries.size(); ++j) {
    double dot = 0;
    for (int d = 0; d < head_dim; ++d) dot += static_cast<double>(q[d]) * entries[j].key[d];
    s[j] = dot / std::sqrt(static_cast<double>(head_dim)) + entries[j].bias;
    m = std::max(m, s[j]);
  }
  double z = 0;
  for (double& x : s) z += (x = std::exp(x - m));
  std::vector<double> out(static_cast<size_t>(head_dim), 0.0);
  for (size_t j = 0; j < entries.size(); ++j) {
    s[j] /= z;
    for (int d = 0; d < head_dim; ++d) out[static_cast<size_t>(d)] += s[j] * entries[j].value[d];
  }
  if (probs != nullptr) *probs = s;
  return out;
}

/// Decode attention of one sequence, one layer. keys/values: [n_kv][n_tokens][head_dim];
/// attended[g][c]; the last chunk always attended. Summaries per group of summary_chunks
/// chunks (0 = none) over the non-attended chunks, bias log(count). Outputs: out
/// [n_heads·head_dim], mass and full [n_kv][n_chunks] (group-averaged), summary [n_kv].
struct DecodeReference {
  std::vector<double> out, mass, full, summary;
};
inline DecodeReference decode_attention(const std::vector<float>& q, int n_heads, int n_kv, int head_dim,
                                        const std::vector<std::vector<float>>& keys,
                                        const std::vector<std::vector<float>>& values, int64_t n_tokens,
                                        int chunk_tokens, const std::vector<std::vector<bool>>& attended,
                                        int summary_chunks) {
  const int group = n_heads / n_kv;
  const int64_t n_chunks = (n_tokens + chunk_tokens - 1) / chunk_tokens;
  DecodeReference r;
  r.out.assign(static_cast<size_t>(n_heads) * head_dim, 0.0);
  r.mass.assign(static_cast<size_t>(n_kv * n_chunks), 0.0);
  r.full = r.mass;
  r.summary.assign(static_cast<size_t>(n_kv), 0.0);
  for (int g = 0; g < n_kv; ++g) {
    auto att = [&](int64_t c) { return c == n_chunks - 1 || attended[g][static_cast<size_t>(c)]; };
    std::vector<AttentionEntry> entries, all;
    std::vector<int64_t> chunk_of;
    std::vector<std::vector<float>> sum_k, sum_v;
    for (int64_t t = 0; t < n_tokens; ++t) {
      const AttentionEntry e{keys[g].data() + t * head_dim, values[g].data() + t * head_dim, 0};
      all.push_back(e);
      if (att(t / chunk_tokens)) {
        entries.push_back(e);
        chunk_of.push_back(t / chunk_tokens);
      }
    }
    if (summary_chunks > 0) {
      for (int64_t first = 0; first < n_chunks; first += summary_chunks) {
        std::vector<double> ks(head_dim, 0.0), vs(head_dim, 0.0);
        int64_t count = 0;
        for (int64_t c = first; c < std::min(first + summary_chunks, n_chunks); ++c) {
          if (att(c)) continue;
          for (int64_t t = c * chunk_tokens; t < std::min(n_tokens, (c + 1) * chunk_tokens); ++t, ++count) {
            for (int d = 0; d < head_dim; ++d) {
              ks[d] += keys[g][t * head_dim + d];
              vs[d] += values[g][t * head_dim + d];
            }
          }
        }
        if (count == 0) continue;
        sum_k.emplace_back(head_dim);
        sum_v.emplace_back(head_dim);
        for (int d = 0; d < head_dim; ++d) {
          sum_k.back()[d] = static_cast<float>(ks[d] / count);
          sum_v.back()[d] = static_cast<float>(vs[d] / count);
        }
        entries.push_back({nullptr, nullptr, std::log(static_cast<double>(count))});
        chunk_of.push_back(-1);
      }
      size_t s = 0;
      for (auto& e : entries) {
        if (e.key == nullptr) {
          e.key = sum_k[s].data();
          e.value = sum_v[s].data();
          ++s;
        }
      }
    }
    for (int hi = 0; hi < group; ++hi) {
      const int h = g * group + hi;
      std::vector<double> p, pf;
      const std::vector<double> o = attend(q.data() + static_cast<size_t>(h) * head_dim, head_dim, entries, &p);
      attend(q.data() + static_cast<size_t>(h) * head_dim, head_dim, all, &pf);
      for (int d = 0; d < head_dim; ++d) r.out[static_cast<size_t>(h) * head_dim + d] = o[d];
      for (size_t j = 0; j < entries.size(); ++j) {
        if (chunk_of[j] >= 0) {
          r.mass[static_cast<size_t>(g * n_chunks + chunk_of[j])] += p[j] / group;
        } else {
          r.summary[static_cast<size_t>(g)] += p[j] / group;
        }
      }
      for (int64_t t = 0; t < n_tokens; ++t) {
        r.full[static_cast<size_t>(g * n_chunks + t / chunk_tokens)] += pf[static_cast<size_t>(t)] / group;
      }
    }
  }
  return r;
}

}  // namespace kvlab::cuda::reference

// ---- policy inputs (policy_input_kernels.hpp) ---------------------------------------------

namespace kvlab::cuda::reference {

/// One token's query heads [n_heads × head_dim] → per KV head the mean over its group
/// [n_kv × head_dim] (LlamaDecoder::group_mean).
inline std::vector<float> query_vectors(const float* q, int n_heads, int n_kv, int head_dim) {
  const int group = n_heads / n_kv;
  std::vector<float> out(static_cast<size_t>(n_kv) * head_dim, 0.0F);
  for (int g = 0; g < n_kv; ++g) {
    for (int d = 0; d < head_dim; ++d) {
      float m = 0.0F;
      for (int j = 0; j < group; ++j) m += q[static_cast<size_t>(g * group + j) * head_dim + d];
      out[static_cast<size_t>(g) * head_dim + d] = m * (1.0F / static_cast<float>(group));
    }
  }
  return out;
}

/// Adds one query vector [head_dim] to the representative scores [chunk_tokens] of the tokens
/// before `own` in a chunk whose keys are [chunk_tokens × head_dim] (score_representatives).
inline void add_representative_scores(std::vector<float>& scores, const float* keys, const float* query,
                                      int head_dim, int own) {
  for (int i = 0; i < own; ++i) {
    double dot = 0;
    for (int d = 0; d < head_dim; ++d) dot += static_cast<double>(query[d]) * keys[static_cast<size_t>(i) * head_dim + d];
    scores[static_cast<size_t>(i)] += static_cast<float>(dot);
  }
}

/// Key summaries of one complete chunk of one row (LlamaDecoder::chunk_keys): channel-wise min
/// and max of keys [chunk_tokens × head_dim], and the mean key of the `representatives` tokens
/// of highest mean score (score_i / (chunk_tokens − 1 − i)), the last token a candidate only
/// when the chunk is too small, ties to the lower index.
struct ChunkKeySummary {
  std::vector<float> min, max, repr;
  std::vector<int> chosen;  // the representative tokens, best first
};
inline ChunkKeySummary chunk_key_summary(const std::vector<float>& keys, const std::vector<float>& scores,
                                         int chunk_tokens, int head_dim, int representatives) {
  const int ct = chunk_tokens;
  ChunkKeySummary s;
  s.min.assign(static_cast<size_t>(head_dim), std::numeric_limits<float>::infinity());
  s.max.assign(static_cast<size_t>(head_dim), -std::numeric_limits<float>::infinity());
  s.repr.assign(static_cast<size_t>(head_dim), 0.0F);
  for (int t = 0; t < ct; ++t) {
    for (int d = 0; d < head_dim; ++d) {
      const float x = keys[static_cast<size_t>(t) * head_dim + d];
      s.min[static_cast<size_t>(d)] = std::min(s.min[static_cast<size_t>(d)], x);
      s.max[static_cast<size_t>(d)] = std::max(s.max[static_cast<size_t>(d)], x);
    }
  }
  const int candidates = ct - 1 >= representatives ? ct - 1 : ct;
  auto mean_score = [&](int i) {
    return i + 1 < ct ? scores[static_cast<size_t>(i)] / static_cast<float>(ct - 1 - i) : 0.0F;
  };
  std::vector<int> order(static_cast<size_t>(candidates));
  for (int i = 0; i < candidates; ++i) order[static_cast<size_t>(i)] = i;
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return mean_score(a) > mean_score(b); });
  order.resize(static_cast<size_t>(std::min(representatives, candidates)));
  s.chosen = order;
  for (int t : order) {
    for (int d = 0; d < head_dim; ++d) s.repr[static_cast<size_t>(d)] += keys[static_cast<size_t>(t) * head_dim + d];
  }
  for (float& x : s.repr) x /= static_cast<float>(order.size());
  return s;
}

}  // namespace kvlab::cuda::reference
