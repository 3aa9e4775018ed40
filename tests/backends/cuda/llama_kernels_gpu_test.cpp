// The decoder's element-wise and row-wise kernels against their CPU references
// (backends/cuda/model/kernel_reference.hpp): fresh random inputs, odd sizes, poisoned outputs.
#include "backends/cuda/model/llama_kernels.hpp"

#include <gtest/gtest.h>

#include <cstring>

#include "backends/cuda/model/kernel_reference.hpp"
#include "tests/backends/cuda/gpu_test_util.hpp"

namespace kvlab::cuda {
namespace {

using test::Dev;
using test::random_floats;
using test::rel_error;

TEST(CudaKernelsSanitize, EmbeddingCopiesRowsInBothPrecisions) {
  KVLAB_REQUIRE_GPU();
  std::mt19937 rng(11);
  const int vocab = 37, hidden = 67, n = 9;
  const auto table = random_floats(static_cast<size_t>(vocab) * hidden, rng);
  std::vector<int32_t> tokens(n);
  std::uniform_int_distribution<int32_t> pick(0, vocab - 1);
  for (auto& t : tokens) t = pick(rng);
  tokens[0] = vocab - 1;
  Dev<int32_t> tok(tokens);
  Dev<float> table_f(table);
  Dev<bf16> table_b(test::to_bf16(table));
  Dev<float> out(static_cast<size_t>(n) * hidden);
  out.poison();
  launch_embedding(EmbeddingView<float>{table_f.get(), tok.get(), out.get(), n, hidden}, nullptr);
  const auto got_f = out.host();
  out.poison();
  launch_embedding(EmbeddingView<bf16>{table_b.get(), tok.get(), out.get(), n, hidden}, nullptr);
  const auto got_b = out.host();
  for (int r = 0; r < n; ++r) {
    for (int i = 0; i < hidden; ++i) {
      const float want = table[static_cast<size_t>(tokens[r]) * hidden + i];
      ASSERT_EQ(got_f[static_cast<size_t>(r) * hidden + i], want);
      ASSERT_EQ(got_b[static_cast<size_t>(r) * hidden + i], __bfloat162float(__float2bfloat16_rn(want)));
    }
  }
}

TEST(CudaKernelsSanitize, RmsNormMatchesReference) {
  KVLAB_REQUIRE_GPU();
  std::mt19937 rng(12);
  for (const int hidden : {576, 577, 31}) {
    const int n = 7;
    const auto x = random_floats(static_cast<size_t>(n) * hidden, rng, 3.0F);
    auto w = random_floats(static_cast<size_t>(hidden), rng, 0.2F);
    for (float& v : w) v += 1.0F;
    const auto ref = reference::rms_norm(x, w, n, hidden, 1e-5F);
    Dev<float> xd(x), wd(w), out_f(x.size());
    Dev<bf16> out_b(x.size());
    out_f.poison();
    out_b.poison();
    launch_rms_norm(RmsNormView<float>{xd.get(), wd.get(), out_f.get(), n, hidden, hidden, hidden, 1e-5F}, nullptr);
    launch_rms_norm(RmsNormView<bf16>{xd.get(), wd.get(), out_b.get(), n, hidden, hidden, hidden, 1e-5F}, nullptr);
    EXPECT_LT(rel_error(out_f.host(), ref), 1e-6) << "hidden " << hidden;
    EXPECT_LT(rel_error(test::to_float(out_b.host()), ref), 5e-3) << "hidden " << hidden;
  }
}

TEST(CudaKernelsSanitize, RopeMatchesReferenceInBothLayoutsAndScalings) {
  KVLAB_REQUIRE_GPU();
  std::mt19937 rng(13);
  const int n = 13, q_heads = 3, k_heads = 1, hd = 64;
  const int64_t k_offset = q_heads * hd;
  const int64_t stride = k_offset + 2 * k_heads * hd + 5;  // a V part and padding stay untouched
  std::vector<double> inv_freq(hd / 2);
  for (int i = 0; i < hd / 2; ++i) inv_freq[i] = std::pow(100000.0, -2.0 * i / hd);
  std::vector<int64_t> pos(n);
  std::uniform_int_distribution<int32_t> pick(0, 200000);
  std::vector<int32_t> pos32(n);
  for (int r = 0; r < n; ++r) pos[r] = pos32[r] = pick(rng);
  for (const bool adjacent : {true, false}) {
    for (const double scale : {1.0, 0.25}) {
      const auto x = random_floats(static_cast<size_t>(n) * stride, rng);
      auto ref = x;
      reference::rope(ref, stride, n, q_heads, k_offset, k_heads, hd, adjacent, pos, inv_freq, scale);
      Dev<float> xd(x);
      Dev<int32_t> pd(pos32);
      Dev<double> fd(inv_freq);
      launch_rope(RopeView{xd.get(), stride, n, q_heads, k_offset, k_heads, hd, adjacent, pd.get(), 0, fd.get(), scale},
                  nullptr);
      const auto got = xd.host();
      EXPECT_LT(rel_error(got, ref), 1e-6) << "adjacent " << adjacent << " scale " << scale;
      for (int r = 0; r < n; ++r) {
        for (int64_t i = k_offset + k_heads * hd; i < stride; ++i) {
          ASSERT_EQ(got[r * stride + i], x[r * stride + i]) << "V or padding changed";
        }
      }
      // first_position instead of a positions array.
      Dev<float> xd2(x);
      launch_rope(RopeView{xd2.get(), stride, n, q_heads, k_offset, k_heads, hd, adjacent, nullptr, 1000, fd.get(), scale},
                  nullptr);
      std::vector<int64_t> seq(n);
      for (int r = 0; r < n; ++r) seq[r] = 1000 + r;
      auto ref2 = x;
      reference::rope(ref2, stride, n, q_heads, k_offset, k_heads, hd, adjacent, seq, inv_freq, scale);
      EXPECT_LT(rel_error(xd2.host(), ref2), 1e-6);
    }
  }
}

TEST(CudaKernelsSanitize, SwigluMatchesReference) {
  KVLAB_REQUIRE_GPU();
  std::mt19937 rng(14);
  const int n = 5, ffn = 1537;
  const auto gu = random_floats(static_cast<size_t>(n) * 2 * ffn, rng, 2.0F);
  Dev<float> gd(gu);
  Dev<bf16> out(static_cast<size_t>(n) * ffn);
  out.poison();
  launch_swiglu(SwigluView{gd.get(), out.get(), n, ffn}, nullptr);
  EXPECT_LT(rel_error(test::to_float(out.host()), reference::swiglu(gu, n, ffn)), 5e-3);
}

TEST(CudaKernelsSanitize, ArgmaxTakesTheLowestIndexOfTheMaximum) {
  KVLAB_REQUIRE_GPU();
  std::mt19937 rng(15);
  const int n = 6, vocab = 49157;
  const int64_t stride = vocab + 3;
  auto logits = random_floats(static_cast<size_t>(n) * stride, rng, 4.0F);
  // Row 1: a tie between two maxima; row 2: the maximum at the very end; row 3: at 0.
  logits[1 * stride + 777] = 100.0F;
  logits[1 * stride + 40000] = 100.0F;
  logits[2 * stride + vocab - 1] = 100.0F;
  logits[3 * stride + 0] = 100.0F;
  logits[4 * stride + vocab] = 1000.0F;  // padding beyond vocab is ignored
  Dev<float> ld(logits);
  Dev<int32_t> out(static_cast<size_t>(n));
  out.poison();
  launch_argmax(ArgmaxView{ld.get(), out.get(), n, vocab, stride}, nullptr);
  const auto got = out.host();
  for (int r = 0; r < n; ++r) EXPECT_EQ(got[r], reference::argmax(logits.data() + r * stride, vocab)) << "row " << r;
  EXPECT_EQ(got[1], 777);
}

TEST(CudaKernelsSanitize, SampleMatchesInversionOnTheCpu) {
  KVLAB_REQUIRE_GPU();
  std::mt19937 rng(16);
  const int n = 64, vocab = 5003;
  const auto logits = random_floats(static_cast<size_t>(n) * vocab, rng, 2.0F);
  std::vector<double> temperature(n), uniforms(n);
  std::uniform_real_distribution<double> u01(0.0, 1.0);
  for (int r = 0; r < n; ++r) {
    temperature[r] = r % 8 == 0 ? 0.0 : 0.3 + 1.5 * u01(rng);  // some rows greedy
    uniforms[r] = u01(rng);
  }
  uniforms[1] = 0.0;
  uniforms[2] = 0.999999999;
  Dev<float> ld(logits);
  Dev<double> td(temperature), ud(uniforms);
  Dev<int32_t> out(static_cast<size_t>(n));
  out.poison();
  launch_sample(SampleView{ld.get(), td.get(), ud.get(), out.get(), n, vocab, vocab}, nullptr);
  const auto got = out.host();
  int distinct_from_argmax = 0;
  for (int r = 0; r < n; ++r) {
    const float* row = logits.data() + static_cast<size_t>(r) * vocab;
    EXPECT_EQ(got[r], reference::sample(row, vocab, temperature[r], uniforms[r])) << "row " << r;
    if (got[r] != reference::argmax(row, vocab)) ++distinct_from_argmax;
  }
  EXPECT_GT(distinct_from_argmax, n / 2);  // sampling really happened
}

}  // namespace
}  // namespace kvlab::cuda
