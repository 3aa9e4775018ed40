// The element-wise and row-wise kernels of the Llama forward pass on the GPU (everything but
// the matrix products, which go through cuBLAS, and attention, in attention_kernels.hpp).
//
// Kernels take small non-owning view structs by value; launchers take a cudaStream_t and throw
// CudaError (cuda_check.hpp) when the launch fails. Shapes are row-major, one row per token.
// Every launcher has a float (double where it matters) CPU reference in
// llama_kernels_reference.hpp, which the gpu tests compare against.
//
// Precision: the residual stream, norms, RoPE and softmax-like reductions are float32; the
// inputs of matrix products (norm outputs, SwiGLU output) are bf16 or float32 as the view says.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace kvlab::cuda {

using bf16 = __nv_bfloat16;

/// out[r, :] = table[tokens[r], :] as float32. Token ids are checked on the host.
template <class T>
struct EmbeddingView {
  const T* table = nullptr;        // [vocab × hidden]
  const int32_t* tokens = nullptr;  // [n]
  float* out = nullptr;            // [n × hidden]
  int n = 0;
  int hidden = 0;
};
template <class T>
void launch_embedding(const EmbeddingView<T>& v, cudaStream_t stream);

/// out[r, :] = x[r, :] / sqrt(mean(x[r, :]²) + eps) ⊙ weight, written as T (bf16 or float).
template <class T>
struct RmsNormView {
  const float* x = nullptr;       // [n × hidden], row stride x_stride
  const float* weight = nullptr;  // [hidden]
  T* out = nullptr;               // [n × hidden], row stride out_stride
  int n = 0;
  int hidden = 0;
  int64_t x_stride = 0;
  int64_t out_stride = 0;
  float eps = 1e-5F;
};
template <class T>
void launch_rms_norm(const RmsNormView<T>& v, cudaStream_t stream);

/// Rotary embedding in place on the Q and K parts of fused QKV rows. Row r sits at position
/// positions[r] (or first_position + r when positions is null); pair i of every head turns by
/// the angle position·position_scale·inv_freq[i], computed in double. Pairs are (2i, 2i+1)
/// of each head when pairs_adjacent (the GGUF order), else (i, i + head_dim/2).
struct RopeView {
  float* x = nullptr;               // [n × row_stride]: Q heads at 0, K heads at k_offset
  int64_t row_stride = 0;
  int n = 0;
  int q_heads = 0;
  int64_t k_offset = 0;
  int k_heads = 0;
  int head_dim = 0;
  bool pairs_adjacent = true;
  const int32_t* positions = nullptr;  // [n] or null
  int64_t first_position = 0;
  const double* inv_freq = nullptr;    // [head_dim / 2]
  double position_scale = 1.0;
};
void launch_rope(const RopeView& v, cudaStream_t stream);

/// out[r, j] = silu(gu[r, j]) · gu[r, ffn + j]: the gate and up halves of one fused product.
struct SwigluView {
  const float* gate_up = nullptr;  // [n × 2·ffn]
  bf16* out = nullptr;             // [n × ffn]
  int n = 0;
  int ffn = 0;
};
void launch_swiglu(const SwigluView& v, cudaStream_t stream);

/// tokens[r] = the index of the largest logits[r, :] (the lowest index among equal maxima).
struct ArgmaxView {
  const float* logits = nullptr;  // [n × vocab], row stride `stride`
  int32_t* tokens = nullptr;      // [n]
  int n = 0;
  int vocab = 0;
  int64_t stride = 0;
};
void launch_argmax(const ArgmaxView& v, cudaStream_t stream);

/// Sampling from softmax(logits[r, :] / temperature[r]) by inversion: the first index i where
/// the running sum of exp((l - max) / T) in double passes uniforms[r] · Z. A row with
/// temperature <= 0 takes the argmax instead.
struct SampleView {
  const float* logits = nullptr;       // [n × vocab], row stride `stride`
  const double* temperature = nullptr;  // [n]
  const double* uniforms = nullptr;     // [n], each in [0, 1)
  int32_t* tokens = nullptr;           // [n]
  int n = 0;
  int vocab = 0;
  int64_t stride = 0;
};
void launch_sample(const SampleView& v, cudaStream_t stream);

/// out[r, j] = bf16(in[r, j]) for j < cols: the query part of fused QKV rows for kernels that
/// read bf16 queries.
struct ToBf16View {
  const float* in = nullptr;
  int64_t in_stride = 0;
  bf16* out = nullptr;
  int64_t out_stride = 0;
  int n = 0;
  int cols = 0;
};
void launch_to_bf16(const ToBf16View& v, cudaStream_t stream);

}  // namespace kvlab::cuda
