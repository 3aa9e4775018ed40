// The ledger on a worked example small enough to check by hand.
#include <gtest/gtest.h>

#include "core/error.hpp"
#include "core/ledger.hpp"

using namespace kvlab;

namespace {

// 2 bytes per token (1 layer, 1 head, 1 dim, K and V, 1 byte), 10-token chunks.
Geometry tiny_geometry() {
  Geometry g;
  g.model = "tiny";
  g.n_layers = 1;
  g.n_kv_heads = 1;
  g.head_dim = 1;
  g.kv_dtype_bytes = 1;
  g.chunk_tokens = 10;
  return g;
}

Plan keep_only(const Ledger& ledger, std::initializer_list<int64_t> chunks, EvictTo where = EvictTo::Host) {
  Plan plan;
  plan.keep = ledger.target();
  ChunkMask& m = plan.keep.make_uniform();
  m.clear();
  for (int64_t c : chunks) m.set(c);
  plan.evict_to = where;
  return plan;
}

}  // namespace

TEST(Ledger, PrefillLeavesEveryPromptChunkInHbm) {
  Ledger ledger(tiny_geometry(), RowLayout{1, 1}, 30, FetchTiming{});
  EXPECT_EQ(ledger.resident().row(0).count(), 3);
  EXPECT_EQ(ledger.bytes().hbm_kv, 60);
  EXPECT_EQ(ledger.bytes().host, 0);
}

TEST(Ledger, EvictionsFetchesAndArrivalTiming) {
  // Link 10 bytes/s; HBM so fast that a step lasts its 1 s overhead (plus nanoseconds).
  const FetchTiming timing{10.0, 1e12, 1.0};
  Ledger ledger(tiny_geometry(), RowLayout{1, 1}, 30, timing);

  // Step 0: 31 tokens; chunk 3 (1 token) is new and starts in HBM. Keep {0, 3}.
  ledger.begin_step(0, 31);
  EXPECT_TRUE(ledger.resident().contains(0, 3));
  ledger.apply(keep_only(ledger, {0, 3}));
  EXPECT_EQ(ledger.bytes().hbm_kv, (10 + 1) * 2);
  EXPECT_EQ(ledger.bytes().host, 20 * 2);
  EXPECT_EQ(ledger.fetch_bytes_this_step(), 0);  // evicting costs no fetch
  ledger.end_step();

  // Step 1 starts at t ≈ 1 s. Fetch chunk 1 (10 tokens = 20 bytes = 2 s on the link):
  // it arrives at ≈ 3 s, after step 1's attention (≈ 2 s), so it is in flight, not resident.
  ledger.begin_step(1, 32);
  ledger.apply(keep_only(ledger, {0, 1, 3}));
  EXPECT_EQ(ledger.fetch_bytes_this_step(), 20);
  EXPECT_FALSE(ledger.resident().contains(0, 1));
  EXPECT_TRUE(ledger.in_flight().contains(0, 1));
  EXPECT_EQ(ledger.bytes().hbm_kv, (10 + 2) * 2);
  ledger.end_step();

  // Step 2 attends at ≈ 3 s + overhead: chunk 1 has arrived and is resident.
  ledger.begin_step(2, 33);
  ledger.apply(keep_only(ledger, {0, 1, 3}));
  EXPECT_TRUE(ledger.resident().contains(0, 1));
  EXPECT_EQ(ledger.fetch_bytes_this_step(), 0);
  EXPECT_EQ(ledger.bytes().hbm_kv, (20 + 3) * 2);
  EXPECT_EQ(ledger.bytes().host, 10 * 2);
  EXPECT_EQ(ledger.fetch_bytes_total(), 20);
  ledger.end_step();
}

TEST(Ledger, FastLinkMakesAFetchUsableInTheSameStep) {
  const FetchTiming timing{1e9, 1e12, 1e-3};
  Ledger ledger(tiny_geometry(), RowLayout{1, 1}, 30, timing);
  ledger.begin_step(0, 31);
  ledger.apply(keep_only(ledger, {3}));
  ledger.end_step();
  ledger.begin_step(1, 32);
  ledger.apply(keep_only(ledger, {0, 3}));
  EXPECT_TRUE(ledger.resident().contains(0, 0));
}

TEST(Ledger, DroppedChunksAreGoneAndBytesBalance) {
  Ledger ledger(tiny_geometry(), RowLayout{1, 1}, 30, FetchTiming{});
  ledger.begin_step(0, 31);
  ledger.apply(keep_only(ledger, {2, 3}, EvictTo::Drop));
  const TierBytes b = ledger.bytes();
  EXPECT_EQ(b.hbm_kv + b.host + b.dropped, 31 * 2);
  EXPECT_EQ(b.dropped, 40);
  EXPECT_EQ(b.host, 0);
  ledger.end_step();
  ledger.begin_step(1, 32);
  EXPECT_THROW(ledger.apply(keep_only(ledger, {0, 2, 3})), PolicyContractError);
}

TEST(Ledger, SummaryAndIndexTiersCountInTheFootprint) {
  Ledger ledger(tiny_geometry(), RowLayout{1, 1}, 300, FetchTiming{});
  ledger.begin_step(0, 301);
  Plan plan = keep_only(ledger, {30});
  plan.tiers.summary_ratio = 128;         // floor(301 / 128) = 2 entries of 2 bytes
  plan.tiers.index_bytes_per_chunk = 16;  // 30 complete chunks
  ledger.apply(plan);
  const TierBytes b = ledger.bytes();
  EXPECT_EQ(b.hbm_kv, 2);
  EXPECT_EQ(b.hbm_summary, 4);
  EXPECT_EQ(b.hbm_index, 30 * 16);
  EXPECT_EQ(b.footprint(), 2 + 4 + 480);
}

TEST(Ledger, PerRowResidencyCostsEachRowItsShare) {
  Geometry g = tiny_geometry();
  g.n_layers = 2;  // 4 bytes per token, 2 bytes per token per row
  Ledger ledger(g, RowLayout{2, 1}, 20, FetchTiming{});
  ledger.begin_step(0, 21);
  Plan plan;
  plan.keep = ledger.target();
  plan.keep.mutable_row(0).reset(0);  // row 0 lets chunk 0 go; row 1 keeps everything
  ledger.apply(plan);
  const TierBytes b = ledger.bytes();
  EXPECT_EQ(b.hbm_kv, (11 + 21) * 2);
  EXPECT_EQ(b.host, 10 * 2);
  EXPECT_EQ(b.hbm_kv + b.host, 21 * 4);
}

TEST(Ledger, MeasuredArrivalWaitsForTheBackendsReport) {
  // The link is so slow that, modelled, nothing would land for many steps; measured, the
  // report alone decides.
  const FetchTiming timing{1e-3, 1e12, 1.0};
  Ledger ledger(tiny_geometry(), RowLayout{1, 1}, 30, timing, ArrivalMode::Measured);
  ledger.begin_step(0, 31);
  ledger.apply(keep_only(ledger, {0, 3}));
  EXPECT_TRUE(ledger.deltas().evicted.contains(0, 1));
  EXPECT_TRUE(ledger.deltas().evicted.contains(0, 2));
  ledger.end_step();

  ledger.begin_step(1, 32);
  ledger.apply(keep_only(ledger, {0, 1, 2, 3}));
  EXPECT_TRUE(ledger.deltas().fetched.contains(0, 1));
  EXPECT_TRUE(ledger.in_flight().contains(0, 1));
  EXPECT_EQ(ledger.fetch_bytes_this_step(), 40);  // counted when issued, as in modelled mode
  Residency landed(RowLayout{1, 1}, ledger.n_chunks());
  landed.make_uniform().set(2);
  ledger.land_reported(landed);
  EXPECT_TRUE(ledger.resident().contains(0, 2));
  EXPECT_TRUE(ledger.deltas().landed.contains(0, 2));
  EXPECT_FALSE(ledger.resident().contains(0, 1));
  EXPECT_TRUE(ledger.in_flight().contains(0, 1));
  EXPECT_EQ(ledger.bytes().hbm_kv, (10 + 10 + 2) * 2);
  // Chunk 2 is no longer in flight: reporting it again is the backend's error.
  EXPECT_THROW(ledger.land_reported(landed), InputError);
  ledger.end_step();

  Ledger modelled(tiny_geometry(), RowLayout{1, 1}, 30, timing);
  modelled.begin_step(0, 31);
  modelled.apply(keep_only(modelled, {0, 1, 2, 3}));
  EXPECT_THROW(modelled.land_reported(Residency(RowLayout{1, 1}, modelled.n_chunks())), InputError);
}
