#include "backends/cuda/exec/model_shape.hpp"

#include <cublas_v2.h>
#include <cuda_bf16.h>

#include <stdexcept>

#include "backends/cuda/cuda_check.hpp"
#include "backends/cuda/exec/random_fill.hpp"

namespace kvlab::cuda {

namespace {

void check_cublas(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS) {
    throw CudaError(std::string("cuBLAS error in ") + what + ": status " + std::to_string(static_cast<int>(status)));
  }
}

int64_t qkv_features(const ModelShape& s) { return int64_t{s.n_heads + 2 * s.n_kv_heads} * s.head_dim; }
int64_t attn_features(const ModelShape& s) { return int64_t{s.n_heads} * s.head_dim; }

/// Elements of one layer's weights, in the order they are laid out: Wqkv, Wo, Wgu, Wdown.
int64_t layer_weight_elements(const ModelShape& s) {
  return qkv_features(s) * s.hidden + attn_features(s) * s.hidden + int64_t{2} * s.ffn * s.hidden +
         int64_t{s.ffn} * s.hidden;
}

void* device_alloc(int64_t bytes, int64_t& total) {
  void* p = nullptr;
  KVLAB_CUDA_CHECK(cudaMalloc(&p, static_cast<size_t>(bytes)));
  total += bytes;
  return p;
}

/// act[b][j] = silu(gu[b][j]) * gu[b][ffn + j] (SwiGLU; CPU reference: swiglu_reference).
__global__ void swiglu_kernel(const __nv_bfloat16* gate_up, __nv_bfloat16* act, int ffn, int batch) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= int64_t{ffn} * batch) return;
  const int64_t b = i / ffn, j = i % ffn;
  const float g = __bfloat162float(gate_up[b * 2 * ffn + j]);
  const float u = __bfloat162float(gate_up[b * 2 * ffn + ffn + j]);
  act[i] = __float2bfloat16(swiglu_value(g, u));
}

}  // namespace

int64_t ModelShape::weight_bytes() const {
  return (layer_weight_elements(*this) * n_layers + int64_t{2} * vocab * hidden) * 2;
}

int64_t ModelShape::weight_bytes_read_per_step() const {
  return (layer_weight_elements(*this) * n_layers + int64_t{vocab} * hidden) * 2;
}

double ModelShape::matmul_flops(int64_t tokens) const {
  return 2.0 * static_cast<double>(tokens) *
         static_cast<double>(layer_weight_elements(*this) * n_layers + int64_t{vocab} * hidden);
}

ModelShape ModelShape::preset(std::string_view name) {
  if (name == "llama3-8b") return {"llama3-8b", 32, 32, 8, 128, 4096, 14336, 128256};
  if (name == "smollm2-135m") return {"smollm2-135m", 30, 9, 3, 64, 576, 1536, 49152};
  throw std::invalid_argument("--model-shape: unknown model '" + std::string(name) +
                              "' (valid: llama3-8b, smollm2-135m)");
}

RandomWeightModel::RandomWeightModel(const ModelShape& shape, int max_batch, uint64_t seed,
                                     cudaStream_t stream)
    : shape_(shape), max_batch_(max_batch) {
  if (max_batch <= 0) throw std::invalid_argument("RandomWeightModel: max_batch must be positive");
  cublasHandle_t handle = nullptr;
  check_cublas(cublasCreate(&handle), "cublasCreate");
  cublas_ = handle;
  // Weights are scaled so activations stay finite through 32 layers of random products.
  const int64_t per_layer = layer_weight_elements(shape);
  for (int l = 0; l < shape.n_layers; ++l) {
    void* w = device_alloc(per_layer * 2, device_bytes_);
    layer_weights_.push_back(w);
    launch_random_fill_bf16(static_cast<__nv_bfloat16*>(w), per_layer, seed + 17 * l, 0.02f, stream);
  }
  lm_head_ = device_alloc(int64_t{shape.vocab} * shape.hidden * 2, device_bytes_);
  launch_random_fill_bf16(static_cast<__nv_bfloat16*>(lm_head_), int64_t{shape.vocab} * shape.hidden,
                          seed + 1000003, 0.02f, stream);
  embeddings_ = device_alloc(int64_t{shape.vocab} * shape.hidden * 2, device_bytes_);
  launch_random_fill_bf16(static_cast<__nv_bfloat16*>(embeddings_), int64_t{shape.vocab} * shape.hidden,
                          seed + 2000003, 1.0f, stream);
  const int64_t b = max_batch;
  x_ = device_alloc(b * shape.hidden * 2, device_bytes_);
  launch_random_fill_bf16(static_cast<__nv_bfloat16*>(x_), b * shape.hidden, seed + 3000017, 1.0f, stream);
  qkv_ = device_alloc(b * qkv_features(shape) * 2, device_bytes_);
  attn_ = device_alloc(b * attn_features(shape) * 2, device_bytes_);
  launch_random_fill_bf16(static_cast<__nv_bfloat16*>(attn_), b * attn_features(shape), seed + 4000037, 1.0f,
                          stream);
  gate_up_ = device_alloc(b * 2 * shape.ffn * 2, device_bytes_);
  act_ = device_alloc(b * shape.ffn * 2, device_bytes_);
  logits_ = device_alloc(b * shape.vocab * 2, device_bytes_);
  KVLAB_CUDA_CHECK(cudaStreamSynchronize(stream));
}

RandomWeightModel::~RandomWeightModel() {
  for (void* w : layer_weights_) cudaFree(w);
  for (void* p : {lm_head_, embeddings_, x_, qkv_, attn_, gate_up_, act_, logits_}) cudaFree(p);
  if (cublas_ != nullptr) cublasDestroy(static_cast<cublasHandle_t>(cublas_));
}

void RandomWeightModel::gemm(const void* weight, int out_features, int in_features, const void* input,
                             void* output, int batch, float beta, cudaStream_t stream) {
  // Row-major y[batch x out] = x[batch x in] · W^T with W row-major [out x in]: in cuBLAS's
  // column-major terms, y^T (out x batch) = W (stored as in x out, transposed) · x^T.
  auto handle = static_cast<cublasHandle_t>(cublas_);
  check_cublas(cublasSetStream(handle, stream), "cublasSetStream");
  const float alpha = 1.0f;
  check_cublas(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, out_features, batch, in_features, &alpha, weight,
                            CUDA_R_16BF, in_features, input, CUDA_R_16BF, in_features, &beta, output, CUDA_R_16BF,
                            out_features, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
               "cublasGemmEx");
}

void RandomWeightModel::pre_attention(int layer, int batch, cudaStream_t stream) {
  if (batch > max_batch_) throw std::invalid_argument("RandomWeightModel: batch above max_batch");
  const auto* w = static_cast<const __nv_bfloat16*>(layer_weights_.at(layer));
  gemm(w, static_cast<int>(qkv_features(shape_)), shape_.hidden, x_, qkv_, batch, 0.0f, stream);
}

void RandomWeightModel::post_attention(int layer, int batch, cudaStream_t stream) {
  if (batch > max_batch_) throw std::invalid_argument("RandomWeightModel: batch above max_batch");
  const auto* w = static_cast<const __nv_bfloat16*>(layer_weights_.at(layer));
  const __nv_bfloat16* wo = w + qkv_features(shape_) * shape_.hidden;
  const __nv_bfloat16* wgu = wo + attn_features(shape_) * shape_.hidden;
  const __nv_bfloat16* wdown = wgu + int64_t{2} * shape_.ffn * shape_.hidden;
  // The residual adds are beta = 1 in the products that write x.
  gemm(wo, shape_.hidden, static_cast<int>(attn_features(shape_)), attn_, x_, batch, 1.0f, stream);
  gemm(wgu, 2 * shape_.ffn, shape_.hidden, x_, gate_up_, batch, 0.0f, stream);
  const int64_t n = int64_t{shape_.ffn} * batch;
  const int threads = 256;
  swiglu_kernel<<<static_cast<unsigned>((n + threads - 1) / threads), threads, 0, stream>>>(
      static_cast<const __nv_bfloat16*>(gate_up_), static_cast<__nv_bfloat16*>(act_), shape_.ffn, batch);
  KVLAB_CUDA_CHECK_LAUNCH("swiglu_kernel");
  gemm(wdown, shape_.hidden, shape_.ffn, act_, x_, batch, 1.0f, stream);
  // Random weights make x drift; keep it bounded so bf16 never overflows to inf.
  launch_random_fill_bf16(static_cast<__nv_bfloat16*>(x_), int64_t{batch} * shape_.hidden,
                          0x9e3779b97f4a7c15ULL + layer, 1.0f, stream);
}

void RandomWeightModel::head(int batch, cudaStream_t stream) {
  gemm(lm_head_, shape_.vocab, shape_.hidden, x_, logits_, batch, 0.0f, stream);
}

}  // namespace kvlab::cuda
