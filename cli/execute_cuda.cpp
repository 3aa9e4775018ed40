#include "cli/execute_cuda.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>
#include <sstream>
#include <tuple>

#include "core/error.hpp"
#include "core/timing_fit.hpp"

#if KVLAB_WITH_CUDA
#include "backends/cuda/device.hpp"
#include "backends/cuda/exec/exec_backend.hpp"
#include "backends/cuda/kernels/sparse_decode.hpp"
#endif

namespace kvlab::cli {

std::vector<FlagSpec> execute_flags() {
  return {
      {"execute", "BACKEND", "execute every policy's plan on a device: cuda (an sm_90 GPU)", ""},
      {"model-shape", "MODEL", "with --execute: also run a random-weight model step (llama3-8b, smollm2-135m)", ""},
      {"batch", "N", "with --execute: decode N copies of each request together (one launch per layer)", "1"},
      {"hbm-pool-gb", "GB", "with --execute: HBM page pool size; 0 = 90% of free memory after the weights", "0"},
      {"mirror", "FORMAT", "with --execute: host mirror bf16 | fp8[:G] | int4[:G] (per group of G) | none", "bf16"},
      {"host-limit-gb", "GB", "with --execute: host RAM the mirror may pin; 0 = 96 GiB (the H200 host)", "0"},
      {"arrival", "MODE", "with --execute: measured (copy events decide) or modelled (the ledger does)", "measured"},
      {"fetch-wait", "", "with --execute: attention waits for copies in flight (stall) instead of skipping them", ""},
      {"steps-csv", "FILE", "with --execute: write every step's measured figures (for kvlab calibrate)", ""},
  };
}

#if !KVLAB_WITH_CUDA

std::unique_ptr<Execution> start_execution(const Args& args, std::unique_ptr<Backend>& source, int64_t policies) {
  for (const char* flag : {"model-shape", "steps-csv", "fetch-wait"}) {
    if (args.has(flag) && !args.has("execute")) throw UsageError(std::string("--") + flag + " needs --execute cuda");
  }
  if (!args.has("execute")) return nullptr;
  if (args.get("execute") != "cuda") throw UsageError("--execute: unknown backend '" + args.get("execute") + "' (valid: cuda)");
  throw UsageError("--execute cuda: this kvlab was built without CUDA (no nvcc at configure time); rebuild with "
                   "-DKVLAB_CUDA=ON, or replay without --execute");
}

#else

namespace {

using cuda::CudaExecBackend;
using cuda::ExecOptions;
using cuda::ExecRecord;

struct LedgerStep {
  int64_t footprint = 0;
  int64_t hbm_kv = 0;
  int64_t late = 0;
};

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2), v.end());
  return v[v.size() / 2];
}

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / static_cast<double>(v.size());
}

class CudaExecution final : public Execution {
 public:
  CudaExecution(std::unique_ptr<CudaExecBackend> backend, ExecOptions options, std::string model_shape,
                std::string mirror_name)
      : backend_(std::move(backend)), options_(std::move(options)), model_shape_(std::move(model_shape)),
        mirror_name_(std::move(mirror_name)) {}

  Backend& backend() override { return *backend_; }

  void attach(EngineOptions& options) override {
    options.threads = 1;  // one GPU, one stream set: sessions run one after another
    auto previous = options.on_step;
    options.on_step = [this, previous](const StepRecord& step) {
      {
        std::lock_guard<std::mutex> lock(mutex_);
        ledger_[{step.request, step.policy, step.step}] = {step.bytes.footprint(), step.bytes.hbm_kv, step.late};
      }
      if (previous) previous(step);
    };
  }

  [[nodiscard]] nlohmann::json summary(const std::vector<PolicyResult>& results,
                                       const EngineOptions& engine) const override {
    const std::vector<ExecRecord> records = backend_->records();
    nlohmann::json out = nlohmann::json::array();
    for (size_t p = 0; p < results.size(); ++p) {
      std::vector<double> step_ms, attention_ms, model_ms, modelled_ms, device_ms;
      double stall_ms = 0, fetch_ms = 0, pool_sum = 0;
      int64_t fetch_bytes = 0, pool_peak = 0, attended = 0, mismatches = 0, steps = 0;
      for (const ExecRecord& r : records) {
        if (r.policy != static_cast<int>(p)) continue;
        ++steps;
        const auto it = ledger_.find({r.request, r.policy, r.step});
        if (it != ledger_.end()) {
          if (it->second.hbm_kv != r.pages_resident_bytes) ++mismatches;
          modelled_ms.push_back(1e3 * predict_step_seconds(engine.timing, it->second.footprint));
        }
        // Step 0 of each request is the first timed step after the pools were filled: keep it
        // out of the steady-state means.
        if (r.step > 0) {
          step_ms.push_back(r.timing.step_ms);
          attention_ms.push_back(r.timing.attention_ms);
          model_ms.push_back(r.timing.model_ms);
          device_ms.push_back(r.timing.attention_ms + r.timing.model_ms + r.timing.stall_ms);
        }
        stall_ms += r.timing.stall_ms;
        fetch_ms += r.timing.fetch_ms;
        fetch_bytes += r.timing.fetch_bytes;
        attended += r.timing.attended_bytes;
        pool_peak = std::max(pool_peak, r.timing.pool_bytes);
        pool_sum += static_cast<double>(r.timing.pool_bytes);
      }
      const double step_mean = mean(step_ms);
      out.push_back({{"policy", results[p].policy},
                     {"steps", steps},
                     {"batch", options_.replicas},
                     {"step_ms_mean", step_mean},
                     {"step_ms_median", median(step_ms)},
                     {"attention_ms_mean", mean(attention_ms)},
                     {"attention_ms_median", median(attention_ms)},
                     {"model_ms_mean", mean(model_ms)},
                     {"modelled_step_ms_mean", mean(modelled_ms)},
                     {"decode_tokens_per_s", step_mean > 0 ? 1e3 * options_.replicas / step_mean : 0.0},
                     // With the host's per-step work (page lists, plans) overlapped with the
                     // previous step's kernels, as a serving loop does: attention + model + stall.
                     {"decode_tokens_per_s_device_bound",
                      mean(device_ms) > 0 ? 1e3 * options_.replicas / mean(device_ms) : 0.0},
                     {"attention_tbps", mean(attention_ms) > 0 && steps > 0
                                            ? static_cast<double>(attended) / steps / (mean(attention_ms) * 1e-3) / 1e12
                                            : 0.0},
                     {"stall_ms_total", stall_ms},
                     {"link_bytes", fetch_bytes},
                     {"link_gbps", fetch_ms > 0 ? static_cast<double>(fetch_bytes) / (fetch_ms * 1e-3) / 1e9 : 0.0},
                     {"late_fetches", results[p].late_fetches},
                     {"pool_peak_bytes", pool_peak},
                     {"pool_mean_bytes", steps > 0 ? pool_sum / static_cast<double>(steps) : 0.0},
                     {"pool_ledger_mismatches", mismatches}});
    }
    return out;
  }

  [[nodiscard]] std::string steps_csv(const std::vector<PolicyResult>& results) const override {
    std::ostringstream csv;
    csv << "policy,request,step,footprint_bytes,attended_bytes,step_seconds,attention_seconds,model_seconds,"
           "stall_seconds,fetch_bytes,fetch_seconds,pool_bytes,resident_bytes,ledger_hbm_kv_bytes,late\n";
    for (const ExecRecord& r : backend_->records()) {
      const auto it = ledger_.find({r.request, r.policy, r.step});
      const LedgerStep ledger = it == ledger_.end() ? LedgerStep{} : it->second;
      const std::string label = static_cast<size_t>(r.policy) < results.size() ? results[r.policy].policy : "";
      csv << '"' << label << '"' << ',' << r.request << ',' << r.step << ',' << ledger.footprint << ','
          << r.timing.attended_bytes << ',' << r.timing.step_ms * 1e-3 << ',' << r.timing.attention_ms * 1e-3 << ','
          << r.timing.model_ms * 1e-3 << ',' << r.timing.stall_ms * 1e-3 << ',' << r.timing.fetch_bytes << ','
          << r.timing.fetch_ms * 1e-3 << ',' << r.timing.pool_bytes << ',' << r.pages_resident_bytes << ','
          << ledger.hbm_kv << ',' << ledger.late << '\n';
    }
    return csv.str();
  }

  [[nodiscard]] nlohmann::json config() const override {
    const auto& res = backend_->resources();
    return {{"backend", "cuda"},
            {"batch", options_.replicas},
            {"query_group", options_.query_group},
            {"model_shape", model_shape_},
            {"mirror", mirror_name_},
            {"fetch_wait", options_.wait_for_fetches},
            {"arrival", arrival_mode_name(backend_->arrival_mode())},
            {"pool_bytes", res.pool_capacity_bytes()},
            {"mirror_bytes", res.mirror_capacity_bytes()},
            {"weights_bytes", res.weights_bytes()},
            {"pin_seconds", res.pin_seconds()}};
  }

 private:
  std::unique_ptr<CudaExecBackend> backend_;
  ExecOptions options_;
  std::string model_shape_;
  std::string mirror_name_;
  mutable std::mutex mutex_;
  std::map<std::tuple<int64_t, int, int64_t>, LedgerStep> ledger_;
};

}  // namespace

std::unique_ptr<Execution> start_execution(const Args& args, std::unique_ptr<Backend>& source, int64_t policies) {
  for (const char* flag : {"model-shape", "steps-csv", "fetch-wait"}) {
    if (args.has(flag) && !args.has("execute")) throw UsageError(std::string("--") + flag + " needs --execute cuda");
  }
  if (!args.has("execute")) return nullptr;
  if (args.get("execute") != "cuda") throw UsageError("--execute: unknown backend '" + args.get("execute") + "' (valid: cuda)");
  ExecOptions o;
  o.geometry = source->geometry();
  o.rows = source->rows();
  const int64_t batch = args.get_int("batch");
  if (batch < 1 || batch > 4096) throw UsageError("--batch must be between 1 and 4096, got " + args.get("batch"));
  o.replicas = static_cast<int>(batch);
  const double pool_gb = args.get_double("hbm-pool-gb");
  if (!(pool_gb >= 0) || pool_gb > 1e4) throw UsageError("--hbm-pool-gb must be between 0 and 10000");
  o.pool = pool_gb > 0 ? cuda::PoolSize::gigabytes(pool_gb) : cuda::PoolSize::fraction(0.9);
  const std::string mirror = args.get("mirror");
  o.mirror = mirror != "none";
  if (o.mirror) o.mirror_spec = cuda::MirrorSpec::parse(mirror, "--mirror");
  const double host_gb = args.get_double("host-limit-gb");
  if (!(host_gb >= 0) || host_gb > 1e5) throw UsageError("--host-limit-gb must be between 0 and 100000");
  o.host_limit_bytes = static_cast<int64_t>(host_gb * 1e9);
  const std::string arrival = args.get("arrival");
  if (arrival != "measured" && arrival != "modelled") {
    throw UsageError("--arrival must be measured or modelled, got '" + arrival + "'");
  }
  o.wait_for_fetches = args.has("fetch-wait");
  std::string shape_name;
  if (args.has("model-shape")) {
    shape_name = args.get("model-shape");
    try {
      o.model = cuda::ModelShape::preset(shape_name);
    } catch (const std::invalid_argument& e) {
      throw UsageError(e.what());
    }
    if (o.model->n_layers != o.geometry.n_layers || o.model->n_kv_heads != o.geometry.n_kv_heads ||
        o.model->head_dim != o.geometry.head_dim) {
      throw UsageError("--model-shape " + shape_name + " does not match the trace's geometry (" + o.geometry.model +
                       ": " + std::to_string(o.geometry.n_layers) + " layers, " +
                       std::to_string(o.geometry.n_kv_heads) + " KV heads, head_dim " +
                       std::to_string(o.geometry.head_dim) + ")");
    }
    o.query_group = o.model->n_heads / o.model->n_kv_heads;
  } else {
    o.query_group = cuda::default_query_group(o.geometry);
    if (o.query_group == 0) {
      throw UsageError("--execute cuda: the query heads of geometry '" + o.geometry.model +
                       "' are unknown; give --model-shape");
    }
  }
  if (const std::string why = cuda::sparse_decode_unsupported(o.geometry.head_dim, o.query_group); !why.empty()) {
    throw InputError(source->describe() + ": " + why);
  }
  if (o.geometry.kv_dtype_bytes != 2) {
    throw InputError(source->describe() + ": --execute cuda runs bf16 K/V (kv_dtype_bytes 2), the trace has " +
                     std::to_string(o.geometry.kv_dtype_bytes));
  }
  for (int64_t i = 0; i < source->requests(); ++i) {
    const RequestInfo info = source->request_info(i);
    o.max_tokens = std::max(o.max_tokens, info.prompt_tokens + info.decode_steps);
  }
  o.sessions = static_cast<int>(std::max<int64_t>(1, policies));
  const cuda::DeviceReport device = cuda::probe_device();
  if (!device.usable) throw InputError("--execute cuda needs an sm_90 GPU: " + device.reason);
  auto backend = std::make_unique<CudaExecBackend>(std::move(source), o,
                                                   arrival == "measured" ? ArrivalMode::Measured : ArrivalMode::Modelled);
  return std::make_unique<CudaExecution>(std::move(backend), o, shape_name, mirror);
}

#endif

}  // namespace kvlab::cli
