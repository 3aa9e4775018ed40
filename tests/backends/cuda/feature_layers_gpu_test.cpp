// Features of several layers from the GPU decoder (kvlab record --feature-layers): a CUDA
// recording, its steps batched, holds per layer what the CPU recording of the same
// teacher-forced tokens holds, and each layer's part is what a one-layer GPU recording holds.
#include <gtest/gtest.h>

#include <filesystem>
#include <iostream>
#include <random>

#include "backends/cpu/cpu_decoder.hpp"
#include "backends/cuda/model/cuda_decoder.hpp"
#include "backends/live/live_backend.hpp"
#include "backends/live/live_record.hpp"
#include "tests/backends/cpu/tiny_llama.hpp"
#include "tests/backends/cuda/gpu_test_util.hpp"
#include "traces/trace.hpp"

namespace kvlab::cuda {
namespace {

constexpr int kRequests = 3;
constexpr int64_t kSteps = 6;

std::shared_ptr<const LlamaWeights> weights() {
  static const auto w =
      std::make_shared<const LlamaWeights>(kvlab::test::to_gguf_layout(kvlab::test::make_tiny_hf({}, 7)));
  return w;
}

DecoderOptions options(std::vector<int> extra) {
  DecoderOptions o;
  o.chunk_tokens = 8;
  o.feature_layer = 1;
  o.extra_feature_layers = std::move(extra);
  o.query_keys = false;
  return o;
}

/// Requests of random prompts whose steps feed the prompt's own first tokens, so that both
/// devices decode the same tokens.
std::vector<LiveRequest> requests() {
  std::mt19937 rng(5);
  std::vector<LiveRequest> out;
  for (int i = 0; i < kRequests; ++i) {
    LiveRequest r;
    r.info.id = std::to_string(i);
    r.info.id.insert(r.info.id.begin(), 'r');  // not "r" + ...: g++ 12 warns (-Wrestrict) on that inlined concatenation
    r.info.workload = "tiny";
    r.info.decode_steps = kSteps;
    r.prompt.resize(static_cast<size_t>(33 + 7 * i));
    for (auto& t : r.prompt) t = static_cast<int32_t>(rng() % 50);
    out.push_back(std::move(r));
  }
  return out;
}

std::string record(const DecoderFactory& factory, StepGroup* group, const std::string& name) {
  LiveOptions o;
  o.stop_at_eos = false;
  o.reference_mass = false;
  LiveBackend backend(factory, {}, requests(), o);
  for (int64_t i = 0; i < backend.requests(); ++i) {
    const std::vector<int32_t>& p = backend.request(i).prompt;
    backend.set_forced_tokens(i, std::vector<int32_t>(p.begin(), p.begin() + kSteps + 1), kSteps);
  }
  RecordOptions ro;
  ro.mass_dtype = MassDtype::Float32;
  ro.in_flight = kRequests;  // the GPU decoder batches the three requests' steps
  ro.group = group;
  std::string file = "kvlab_gpu_layers_";
  file.append(name).append(".h5");
  const std::string path = (std::filesystem::temp_directory_path() / file).string();
  record_trace(backend, path, ro);
  return path;
}

std::string record_gpu(std::vector<int> extra, const std::string& name) {
  CudaDecoderOptions g = cuda_options_of(options(std::move(extra)));
  g.kv_capacity_tokens = 4096;
  const CudaDecoderSet set = cuda_decoder_set(weights(), g);
  return record(set.factory, &set.shared->group(), name);
}

/// Columns [part·width, (part+1)·width) of a row-major matrix with rows of `cols`.
std::vector<float> part_of(const std::vector<float>& m, int64_t cols, int64_t width, int64_t part) {
  std::vector<float> out;
  for (size_t r = 0; r < m.size() / static_cast<size_t>(cols); ++r) {
    const auto from = m.begin() + static_cast<std::ptrdiff_t>(r * cols + part * width);
    out.insert(out.end(), from, from + width);
  }
  return out;
}

TEST(CudaRecordFeatureLayers, EveryLayersFeaturesMatchTheCpuRecording) {
  KVLAB_REQUIRE_GPU();
  const std::string gpu = record_gpu({0}, "gpu");
  const std::string cpu = record(cpu_decoder_factory(weights(), options({0})), nullptr, "cpu");
  const std::string gpu_one = record_gpu({}, "gpu_one");  // layer 1 alone
  const auto g = TraceReader::open(gpu);
  const auto c = TraceReader::open(cpu);
  const auto o = TraceReader::open(gpu_one);
  ASSERT_EQ(g->request_count(), kRequests);
  double worst_query = 0;
  double worst_keys = 0;
  for (int64_t i = 0; i < kRequests; ++i) {
    const auto gr = g->request(i);
    const auto cr = c->request(i);
    const auto one = o->request(i);
    ASSERT_EQ(gr->header().feature_layers, (std::vector<int>{1, 0}));
    ASSERT_EQ(cr->header().feature_layers, (std::vector<int>{1, 0}));
    EXPECT_TRUE(one->header().feature_layers.empty());
    ASSERT_EQ(gr->header().d_query, cr->header().d_query);
    ASSERT_EQ(gr->header().d_key, cr->header().d_key);
    const int64_t dq = gr->header().d_query / 2;
    std::vector<float> qg, qc, q1;
    for (int64_t t = 0; t < kSteps; ++t) {
      gr->read_query(t, qg);
      cr->read_query(t, qc);
      one->read_query(t, q1);
      for (int64_t part = 0; part < 2; ++part) {
        const double e = test::rel_error(part_of(qg, 2 * dq, dq, part), part_of(qc, 2 * dq, dq, part));
        EXPECT_LT(e, 5e-2) << "request " << i << " step " << t << " layer part " << part;
        worst_query = std::max(worst_query, e);
      }
      // A batched pass gives each sequence its own rows: layer 1's part is the one-layer recording's.
      EXPECT_EQ(part_of(qg, 2 * dq, dq, 0), q1) << "request " << i << " step " << t;
    }
    std::vector<float> fg, fc, f1;
    gr->read_chunk_features(fg);
    cr->read_chunk_features(fc);
    one->read_chunk_features(f1);
    const int64_t dk = gr->header().d_key / 2;
    for (int64_t part = 0; part < 2; ++part) {
      const double e = test::rel_error(part_of(fg, 2 * dk, dk, part), part_of(fc, 2 * dk, dk, part));
      EXPECT_LT(e, 3e-2) << "request " << i << " chunk features, layer part " << part;
      worst_keys = std::max(worst_keys, e);
    }
    EXPECT_EQ(part_of(fg, 2 * dk, dk, 0), f1) << "request " << i;
  }
  std::cout << "[ errors ] feature layers 1,0 against the CPU: query features " << worst_query << ", chunk features "
            << worst_keys << "\n";
  for (const std::string& p : {gpu, cpu, gpu_one}) std::filesystem::remove(p);
}

}  // namespace
}  // namespace kvlab::cuda
