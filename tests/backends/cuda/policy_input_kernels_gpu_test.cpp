// The policy-input kernels (query vectors and representative scores, chunk key summaries, the
// window mass sum) against their CPU references, on random data in a pool whose slots are
// scattered.
#include "backends/cuda/model/policy_input_kernels.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>

#include "backends/cuda/model/kernel_reference.hpp"
#include "tests/backends/cuda/gpu_test_util.hpp"

namespace kvlab::cuda {
namespace {

using test::Dev;
using test::random_floats;
using test::rel_error;
using test::scattered_slots;

struct Shape {
  int n_layers = 2, n_kv = 2, n_heads = 6, hd = 64, ct = 8, n_slots = 24;
  [[nodiscard]] KvPoolView pool(bf16* k = nullptr) const {
    return KvPoolView{k, nullptr, nullptr, nullptr, n_layers, n_kv, hd, ct};
  }
  [[nodiscard]] size_t score_elements() const {
    return static_cast<size_t>(n_slots) * representative_score_elements(pool());
  }
};

/// One page's keys as stored, float.
std::vector<float> page_keys(const Shape& s, const std::vector<float>& k_all, int slot, int layer, int g) {
  const auto at = static_cast<size_t>(s.pool().page(slot, layer, g) * s.ct * s.hd);
  return {k_all.begin() + static_cast<int64_t>(at), k_all.begin() + static_cast<int64_t>(at + static_cast<size_t>(s.ct * s.hd))};
}

TEST(CudaPolicyInputKernels, QueryScoresOfAPrefillAndOfADecodeBatchMatchTheReference) {
  KVLAB_REQUIRE_GPU();
  const Shape s;
  std::mt19937 rng(31);
  const size_t k_n = static_cast<size_t>(s.n_slots) * s.pool().slot_elements();
  const std::vector<float> k_all = test::to_float(test::to_bf16(random_floats(k_n, rng)));
  Dev<bf16> k(test::to_bf16(k_all));
  const std::vector<float> scores0 = random_floats(s.score_elements(), rng);
  Dev<float> scores(scores0);
  std::vector<float> want = scores0;
  const int layer = 1;
  const int q_stride = s.n_heads * s.hd + 5;

  // A prefill block starting mid-chunk (positions 5..33 of one sequence: chunks 0..4).
  const int64_t first = 5;
  const int n = 29;
  const auto slots = scattered_slots(5, s.n_slots, 4);
  Dev<int32_t> slots_d(slots);
  const auto q = random_floats(static_cast<size_t>(n) * q_stride, rng);
  Dev<float> q_d(q);
  const int64_t qv_stride = static_cast<int64_t>(s.n_kv) * s.hd;
  Dev<float> qv(static_cast<size_t>(qv_stride));
  qv.poison();
  QueryScoresView v;
  v.q = q_d.get();
  v.q_stride = q_stride;
  v.n = n;
  v.n_heads = s.n_heads;
  v.first_position = first;
  v.slot_table = slots_d.get();
  v.pool = s.pool(k.get());
  v.layer = layer;
  v.scores = scores.get();
  v.query_mean = qv.get();
  v.query_row_stride = qv_stride;
  v.query_first_row = n - 1;  // the last row's query vectors only
  launch_query_scores(v, nullptr);
  std::vector<float> last_query;
  for (int r = 0; r < n; ++r) {
    const int64_t pos = first + r;
    const auto mean = reference::query_vectors(q.data() + static_cast<size_t>(r) * q_stride, s.n_heads, s.n_kv, s.hd);
    for (int g = 0; g < s.n_kv; ++g) {
      const int slot = slots[static_cast<size_t>(pos / s.ct)];
      const std::vector<float> keys = page_keys(s, k_all, slot, layer, g);
      std::vector<float> page_scores(want.begin() + s.pool().page(slot, layer, g) * s.ct,
                                     want.begin() + (s.pool().page(slot, layer, g) + 1) * s.ct);
      reference::add_representative_scores(page_scores, keys.data(), mean.data() + static_cast<size_t>(g) * s.hd, s.hd,
                                           static_cast<int>(pos % s.ct));
      std::copy(page_scores.begin(), page_scores.end(), want.begin() + s.pool().page(slot, layer, g) * s.ct);
    }
    if (r == n - 1) last_query = mean;
  }
  EXPECT_LT(rel_error(scores.host(), want), 3e-5);
  EXPECT_LT(rel_error(qv.host(), last_query), 1e-6);

  // A decode step of three sequences at different positions, each with its own slot table.
  const std::vector<int32_t> positions{0, 13, 22};
  const int batch = static_cast<int>(positions.size());
  const int slot_stride = 3;
  // Distinct slots for the chunks being written (a sequence owns its newest chunk).
  const std::vector<int32_t> tables{5, 6, 7, 8, 9, 10, 11, 12, 13};
  Dev<int32_t> tables_d(tables);
  Dev<int32_t> positions_d(positions);
  const auto qb = random_floats(static_cast<size_t>(batch) * q_stride, rng);
  Dev<float> qb_d(qb);
  const int64_t row_stride = static_cast<int64_t>(s.n_layers) * s.n_kv * s.hd;
  Dev<float> qvb(static_cast<size_t>(batch * row_stride));
  qvb.poison();
  v.q = qb_d.get();
  v.n = batch;
  v.positions = positions_d.get();
  v.first_position = 0;
  v.slot_table = tables_d.get();
  v.slot_stride = slot_stride;
  v.query_mean = qvb.get() + static_cast<int64_t>(layer) * s.n_kv * s.hd;
  v.query_row_stride = row_stride;
  v.query_first_row = 0;
  launch_query_scores(v, nullptr);
  const std::vector<float> got_qv = qvb.host();
  for (int b = 0; b < batch; ++b) {
    const int64_t pos = positions[static_cast<size_t>(b)];
    const auto mean = reference::query_vectors(qb.data() + static_cast<size_t>(b) * q_stride, s.n_heads, s.n_kv, s.hd);
    for (int g = 0; g < s.n_kv; ++g) {
      const int slot = tables[static_cast<size_t>(b * slot_stride + pos / s.ct)];
      const int64_t page = s.pool().page(slot, layer, g);
      const std::vector<float> keys = page_keys(s, k_all, slot, layer, g);
      std::vector<float> page_scores(want.begin() + page * s.ct, want.begin() + (page + 1) * s.ct);
      reference::add_representative_scores(page_scores, keys.data(), mean.data() + static_cast<size_t>(g) * s.hd, s.hd,
                                           static_cast<int>(pos % s.ct));
      std::copy(page_scores.begin(), page_scores.end(), want.begin() + page * s.ct);
      for (int d = 0; d < s.hd; ++d) {
        const auto at = static_cast<size_t>(b * row_stride + (layer * s.n_kv + g) * s.hd + d);
        ASSERT_FLOAT_EQ(got_qv[at], mean[static_cast<size_t>(g * s.hd + d)]) << "sequence " << b;
      }
    }
  }
  EXPECT_LT(rel_error(scores.host(), want), 3e-5);
}

void check_chunk_keys(int ct, int representatives) {
  Shape s;
  s.ct = ct;
  std::mt19937 rng(static_cast<uint32_t>(ct * 10 + representatives));
  const size_t k_n = static_cast<size_t>(s.n_slots) * s.pool().slot_elements();
  const std::vector<float> k_all = test::to_float(test::to_bf16(random_floats(k_n, rng)));
  Dev<bf16> k(test::to_bf16(k_all));
  const std::vector<float> scores = random_floats(s.score_elements(), rng, 4.0F);  // distinct: no ties
  Dev<float> scores_d(scores);
  const auto slots = scattered_slots(5, s.n_slots, 8);
  Dev<int32_t> slots_d(slots);
  const int n_rows = s.n_layers * s.n_kv;
  const size_t per = slots.size() * n_rows * s.hd;
  Dev<float> lo(per), hi(per), repr(per);
  for (auto* d : {&lo, &hi, &repr}) d->poison();
  launch_chunk_keys(ChunkKeysView{s.pool(k.get()), scores_d.get(), slots_d.get(), static_cast<int>(slots.size()),
                                  representatives, lo.get(), hi.get(), repr.get()},
                    nullptr);
  const auto got_lo = lo.host(), got_hi = hi.host(), got_repr = repr.host();
  for (size_t c = 0; c < slots.size(); ++c) {
    for (int row = 0; row < n_rows; ++row) {
      const int64_t page = s.pool().page(slots[c], row / s.n_kv, row % s.n_kv);
      const std::vector<float> keys = page_keys(s, k_all, slots[c], row / s.n_kv, row % s.n_kv);
      const std::vector<float> page_scores(scores.begin() + page * ct, scores.begin() + (page + 1) * ct);
      const reference::ChunkKeySummary want = reference::chunk_key_summary(keys, page_scores, ct, s.hd, representatives);
      const auto at = static_cast<int64_t>((c * n_rows + row) * s.hd);
      auto part = [&](const std::vector<float>& all) {
        return std::vector<float>(all.begin() + at, all.begin() + at + s.hd);
      };
      EXPECT_EQ(part(got_lo), want.min) << "chunk " << c << " row " << row;
      EXPECT_EQ(part(got_hi), want.max) << "chunk " << c << " row " << row;
      EXPECT_LT(rel_error(part(got_repr), want.repr), 1e-6) << "chunk " << c << " row " << row << " ct " << ct;
    }
  }
}

TEST(CudaPolicyInputKernels, ChunkKeysMatchTheReference) {
  KVLAB_REQUIRE_GPU();
  check_chunk_keys(8, 4);
  check_chunk_keys(64, 4);
  check_chunk_keys(4, 4);  // too small to leave the last token out
  check_chunk_keys(1, 4);
}

TEST(CudaPolicyInputKernels, ChunkKeysBreakTiesToTheLowerIndex) {
  KVLAB_REQUIRE_GPU();
  Shape s;
  s.n_slots = 1;
  s.n_layers = 1;
  s.n_kv = 1;
  std::mt19937 rng(2);
  const std::vector<float> k_all =
      test::to_float(test::to_bf16(random_floats(static_cast<size_t>(s.pool().slot_elements()), rng)));
  Dev<bf16> k(test::to_bf16(k_all));
  // Mean scores all equal (score_i = ct − 1 − i): tokens 0..3 are the representatives.
  std::vector<float> scores(static_cast<size_t>(s.ct));
  for (int i = 0; i < s.ct; ++i) scores[static_cast<size_t>(i)] = static_cast<float>(s.ct - 1 - i);
  Dev<float> scores_d(scores);
  Dev<int32_t> slots_d(std::vector<int32_t>{0});
  Dev<float> lo(static_cast<size_t>(s.hd)), hi(lo.size()), repr(lo.size());
  launch_chunk_keys(ChunkKeysView{s.pool(k.get()), scores_d.get(), slots_d.get(), 1, 4, lo.get(), hi.get(), repr.get()},
                    nullptr);
  const reference::ChunkKeySummary want = reference::chunk_key_summary(k_all, scores, s.ct, s.hd, 4);
  EXPECT_EQ(want.chosen, (std::vector<int>{0, 1, 2, 3}));
  EXPECT_LT(rel_error(repr.host(), want.repr), 1e-6);
}

TEST(CudaPolicyInputKernels, MassSumAddsEachRowsOwnChunksOnly) {
  KVLAB_REQUIRE_GPU();
  const int batch = 5, rows = 3, n_chunks = 7, ct = 4;
  const int64_t row_stride = n_chunks + 2, seq_stride = (rows + 1) * row_stride;
  std::mt19937 rng(4);
  const std::vector<float> mass = random_floats(static_cast<size_t>(batch * seq_stride), rng);
  const std::vector<int32_t> n_tokens{3, 9, 17, 26, 28};  // 1, 3, 5, 7, 7 chunks
  const std::vector<float> out0 = random_floats(static_cast<size_t>(rows * n_chunks), rng);
  Dev<float> mass_d(mass), out(out0);
  Dev<int32_t> ntok(n_tokens);
  const float weight = 0.25F;
  launch_mass_sum(MassSumView{mass_d.get(), batch, seq_stride, row_stride, ntok.get(), ct, rows, n_chunks, weight,
                              out.get(), n_chunks},
                  nullptr);
  std::vector<float> want = out0;
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < n_chunks; ++c) {
      float sum = 0.0F;
      for (int b = 0; b < batch; ++b) {
        if (c < (n_tokens[static_cast<size_t>(b)] + ct - 1) / ct) sum += mass[static_cast<size_t>(b * seq_stride + r * row_stride + c)];
      }
      want[static_cast<size_t>(r * n_chunks + c)] += weight * sum;
    }
  }
  EXPECT_LT(rel_error(out.host(), want), 1e-6);
}

}  // namespace
}  // namespace kvlab::cuda
