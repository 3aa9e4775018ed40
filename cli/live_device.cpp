#include "cli/live_device.hpp"

#include "backends/cpu/cpu_decoder.hpp"
#include "core/error.hpp"

#if KVLAB_WITH_CUDA
#include "backends/cuda/device.hpp"
#include "backends/cuda/model/cuda_decoder.hpp"
#endif

namespace kvlab::cli {

std::vector<FlagSpec> live_device_flags() {
  return {{"backend", "cpu|cuda", "what decodes: the CPU decoder, or the GPU decoder (an sm_90 GPU)", "cpu"},
          {"cuda-graphs", "on|off", "with --backend cuda: replay decode steps from CUDA graphs", "off"},
          {"cuda-prefill", "tensor|float32",
           "with --backend cuda: prefill attention on tensor cores (bf16 Q and probabilities; head size 64 or 128, else float32) or in float32", "tensor"}};
}

namespace {

std::string backend_of(const Args& args) {
  const std::string backend = args.get("backend");
  if (backend != "cpu" && backend != "cuda") {
    throw UsageError("--backend must be cpu or cuda, got '" + backend + "'");
  }
  if (backend == "cpu" && args.get("cuda-graphs") != "off") throw UsageError("--cuda-graphs needs --backend cuda");
  (void)parse_on_off(args.get("cuda-graphs"), "--cuda-graphs");
  const std::string prefill = args.get("cuda-prefill");
  if (prefill != "tensor" && prefill != "float32") {
    throw UsageError("--cuda-prefill must be tensor or float32, got '" + prefill + "'");
  }
  if (backend == "cpu" && prefill != "tensor") throw UsageError("--cuda-prefill needs --backend cuda");
  return backend;
}

}  // namespace

#if !KVLAB_WITH_CUDA

void check_cuda_usable() {
  throw InputError(
      "--backend cuda: this kvlab was built without CUDA (no nvcc at configure time); rebuild with "
      "-DKVLAB_CUDA=ON, or use --backend cpu");
}

#else

void check_cuda_usable() {
  const cuda::DeviceReport report = cuda::probe_device();
  if (!report.usable) throw InputError("--backend cuda: no usable GPU (" + report.reason + "); use --backend cpu");
}

#endif

void live_check_device(const Args& args) {
  if (backend_of(args) == "cuda") check_cuda_usable();
}

LiveDecoders live_decoders(const Args& args, const LiveModel& model, const DecoderOptions& options) {
  live_check_device(args);
  LiveDecoders out;
  out.backend = backend_of(args);
  if (out.backend == "cpu") {
    out.factory = cpu_decoder_factory(model.weights, options);
    out.device_stats = [] { return nlohmann::json::object(); };
    return out;
  }
#if KVLAB_WITH_CUDA
  cuda::CudaDecoderOptions o = cuda::cuda_options_of(options);
  o.cuda_graphs = parse_on_off(args.get("cuda-graphs"), "--cuda-graphs");
  o.prefill_attention_variant = args.get("cuda-prefill") == "float32" ? 1 : 0;  // 0: tensor cores where they apply
  cuda::CudaDecoderSet set = cuda::cuda_decoder_set(model.weights, o);
  out.factory = set.factory;
  out.group = &set.shared->group();
  std::shared_ptr<cuda::SharedCudaDecoder> shared = set.shared;
  out.device_stats = [shared] {
    const cuda::CoalescerStats s = shared->stats();
    return nlohmann::json{{"passes", s.passes},
                          {"sequence_steps", s.sequence_steps},
                          {"batch_mean", s.passes > 0 ? static_cast<double>(s.sequence_steps) / s.passes : 0.0},
                          {"batch_max", s.max_batch},
                          {"pass_ms_mean", s.passes > 0 ? s.pass_ms / s.passes : 0.0},
                          {"pass_wall_ms_mean", s.passes > 0 ? s.pass_wall_ms / s.passes : 0.0},
                          // where a pass's host time goes (CudaStepTiming)
                          {"pass_host_prepare_ms_mean", s.passes > 0 ? s.host_prepare_ms / s.passes : 0.0},
                          {"pass_host_launch_ms_mean", s.passes > 0 ? s.host_launch_ms / s.passes : 0.0},
                          {"pass_host_wait_ms_mean", s.passes > 0 ? s.host_wait_ms / s.passes : 0.0},
                          {"pass_host_unpack_ms_mean", s.passes > 0 ? s.host_unpack_ms / s.passes : 0.0},
                          {"decode_tokens_per_s_in_passes",
                           s.pass_wall_ms > 0 ? static_cast<double>(s.sequence_steps) / (s.pass_wall_ms * 1e-3) : 0.0},
                          {"attention_ms_mean", s.passes > 0 ? s.attention_ms / s.passes : 0.0},
                          {"weight_bytes", shared->unlocked().weight_bytes()},
                          {"kv_capacity_tokens", shared->unlocked().kv_capacity_tokens()}};
  };
  out.keep_alive = shared;
#endif
  return out;
}

void LiveSpeed::add(const LiveOutput& out) {
  steps += out.steps;
  decode_seconds += out.decode_seconds;
  timed_steps += out.timed_steps;
  attention_seconds += out.attention_seconds;
  pass_seconds += out.pass_seconds;
  stall_seconds += out.stall_seconds;
  batch_sum += out.batch_sum;
}

void LiveSpeed::write(nlohmann::json& obj) const {
  obj["decode_tokens_per_s"] = decode_seconds > 0 ? static_cast<double>(steps) / decode_seconds : 0.0;
  if (timed_steps == 0) {
    for (const char* key : {"step_attention_ms", "step_model_ms", "step_stall_ms", "step_batch_mean"})
      obj[key] = nullptr;
    return;
  }
  const double n = static_cast<double>(timed_steps);
  obj["step_attention_ms"] = 1e3 * attention_seconds / n;
  obj["step_model_ms"] = 1e3 * (pass_seconds - attention_seconds) / n;
  obj["step_stall_ms"] = 1e3 * stall_seconds / n;
  obj["step_batch_mean"] = static_cast<double>(batch_sum) / n;
}

nlohmann::json live_speed_fields() {
  return {{"decode_tokens_per_s",
           "decode steps over the wall time of this policy's sessions (waiting for a batch "
           "included)"},
          {"step_attention_ms",
           "device time per decode step in attention (all layers): each step's share of the "
           "forward pass that served it (the pass divided by its batch); null when the decoder "
           "does not time steps (cpu)"},
          {"step_model_ms",
           "device time per decode step in the rest of the model (projections, MLP, norms, LM head, "
           "sampling), shared the same way"},
          {"step_stall_ms",
           "device time per decode step spent waiting for KV data from host memory; 0 with --backend "
           "cuda, which keeps every chunk resident in HBM (no host tier)"},
          {"step_batch_mean", "mean number of sequences per forward pass"},
          {"decode_tokens_per_s_overall", "config.json: every session's decode steps over the run's wall time less the "
                                          "device's prefill time (prefills hold the device one at a time)"},
          {"device.decode_tokens_per_s_in_passes", "config.json: sequence steps over the host time of the batched "
                                                   "passes (uploads, kernels, downloads, unpacking)"},
          {"device.pass_host_*_ms_mean", "config.json: a pass's host time split into prepare (checks, tables, uploads), "
                                         "launch (enqueueing the kernels), wait (for the device and the downloads) "
                                         "and unpack (per-sequence outputs)"}};
}

}  // namespace kvlab::cli
