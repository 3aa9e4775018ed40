#include "backends/cuda/memory/gather.hpp"

namespace kvlab::cuda {
namespace {

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  return static_cast<uint32_t>(float_to_bf16(lo)) | (static_cast<uint32_t>(float_to_bf16(hi)) << 16);
}

template <int kUnroll>
__device__ void gather_bf16(const GatherPiece& p) {
  const auto* src = reinterpret_cast<const uint4*>(p.src);
  auto* dst = reinterpret_cast<uint4*>(p.dst);
  const int64_t n16 = p.elems / 8;
  const int64_t stride = blockDim.x;
  for (int64_t base = threadIdx.x; base < n16; base += stride * kUnroll) {
    uint4 v[kUnroll];
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      const int64_t i = base + k * stride;
      if (i < n16) v[k] = src[i];
    }
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      const int64_t i = base + k * stride;
      if (i < n16) dst[i] = v[k];
    }
  }
}

// fp8: each thread turns 16 codes (one 16-byte load) into 16 bf16 values (two 16-byte stores).
template <int kUnroll>
__device__ void gather_fp8(const GatherPiece& p, int group) {
  const auto* codes = reinterpret_cast<const uint4*>(p.src);
  const auto* scales = reinterpret_cast<const float*>(p.src + p.elems);
  auto* dst = reinterpret_cast<uint4*>(p.dst);
  const int64_t n16 = p.elems / 16;
  const int64_t stride = blockDim.x;
  for (int64_t base = threadIdx.x; base < n16; base += stride * kUnroll) {
    uint4 c[kUnroll];
    float s[kUnroll];
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      const int64_t i = base + k * stride;
      if (i < n16) {
        c[k] = codes[i];
        s[k] = scales[i * 16 / group];
      }
    }
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      const int64_t i = base + k * stride;
      if (i >= n16) continue;
      const uint32_t w[4] = {c[k].x, c[k].y, c[k].z, c[k].w};
      uint32_t out[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const uint32_t word = w[j / 2] >> ((j % 2) * 16);
        out[j] = pack_bf16x2(e4m3_to_float(word & 0xffU) * s[k], e4m3_to_float((word >> 8) & 0xffU) * s[k]);
      }
      dst[2 * i] = make_uint4(out[0], out[1], out[2], out[3]);
      dst[2 * i + 1] = make_uint4(out[4], out[5], out[6], out[7]);
    }
  }
}

// int4: each thread turns 16 bytes (32 values, low nibble first) into four 16-byte stores.
template <int kUnroll>
__device__ void gather_int4(const GatherPiece& p, int group) {
  const auto* codes = reinterpret_cast<const uint4*>(p.src);
  const auto* scales = reinterpret_cast<const float*>(p.src + p.elems / 2);
  auto* dst = reinterpret_cast<uint4*>(p.dst);
  const int64_t n16 = p.elems / 32;
  const int64_t stride = blockDim.x;
  for (int64_t base = threadIdx.x; base < n16; base += stride * kUnroll) {
    uint4 c[kUnroll];
    float s[kUnroll];
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      const int64_t i = base + k * stride;
      if (i < n16) {
        c[k] = codes[i];
        s[k] = scales[i * 32 / group];
      }
    }
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      const int64_t i = base + k * stride;
      if (i >= n16) continue;
      const uint32_t w[4] = {c[k].x, c[k].y, c[k].z, c[k].w};
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        uint32_t out[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const uint32_t byte = (w[q] >> (8 * j)) & 0xffU;
          out[j] = pack_bf16x2(int4_to_float(byte & 0xfU) * s[k], int4_to_float(byte >> 4) * s[k]);
        }
        dst[4 * i + q] = make_uint4(out[0], out[1], out[2], out[3]);
      }
    }
  }
}

// Publishes the arrival of the block's last `count` pages (the last one at index `last`, the
// others gridDim.x apart): every thread's stores are ordered before the flags by a fence and a
// barrier, then one thread writes them.
__device__ void publish_landed(uint32_t* landed, int last, int count, uint32_t seq) {
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence_system();
    for (int k = 0; k < count; ++k) {
      *static_cast<volatile uint32_t*>(landed + last - k * static_cast<int>(gridDim.x)) = seq;
    }
  }
}

template <MirrorFormat F, int kUnroll>
__global__ void gather_pages_kernel(const GatherPiece* __restrict__ pieces, int n, int group, uint32_t* landed,
                                    uint32_t seq, int flag_every) {
  int since = 0;
  int p = blockIdx.x;
  for (; p < n; p += gridDim.x) {
    const GatherPiece piece = pieces[p];
    if constexpr (F == MirrorFormat::Bf16) {
      gather_bf16<kUnroll>(piece);
    } else if constexpr (F == MirrorFormat::Fp8E4m3) {
      gather_fp8<kUnroll>(piece, group);
    } else {
      gather_int4<kUnroll>(piece, group);
    }
    if (landed != nullptr && ++since >= flag_every) {
      publish_landed(landed, p, since, seq);
      since = 0;
    }
  }
  if (landed != nullptr && since > 0) publish_landed(landed, p - static_cast<int>(gridDim.x), since, seq);
}

template <MirrorFormat F>
void launch_format(const GatherPiece* pieces, int n, int group, int grid, int threads, cudaStream_t stream,
                   int unroll, uint32_t* landed, uint32_t seq, int flag_every) {
  if (unroll >= 8) {
    gather_pages_kernel<F, 8><<<grid, threads, 0, stream>>>(pieces, n, group, landed, seq, flag_every);
  } else {
    gather_pages_kernel<F, 4><<<grid, threads, 0, stream>>>(pieces, n, group, landed, seq, flag_every);
  }
}

// One thread per group (or per 8 values for bf16): reads the HBM values, writes the mirror.
__global__ void mirror_write_kernel(const MirrorWrite* __restrict__ writes, int n, MirrorSpec spec) {
  const MirrorWrite w = writes[blockIdx.x];
  if (spec.format == MirrorFormat::Bf16) {
    const auto* src = reinterpret_cast<const uint4*>(w.src + w.begin);
    auto* dst = reinterpret_cast<uint4*>(w.dst + static_cast<int64_t>(w.begin) * 2);
    for (int i = threadIdx.x; i < w.n / 8; i += blockDim.x) dst[i] = src[i];
    return;
  }
  const int group = spec.group;
  const bool fp8 = spec.format == MirrorFormat::Fp8E4m3;
  const int64_t code_bytes = fp8 ? w.page_elems : w.page_elems / 2;
  auto* scales = reinterpret_cast<float*>(w.dst + code_bytes);
  for (int g = threadIdx.x; g < w.n / group; g += blockDim.x) {
    const int64_t first = static_cast<int64_t>(w.begin) + static_cast<int64_t>(g) * group;
    const uint16_t* x = w.src + first;
    float amax = 0;
    for (int i = 0; i < group; ++i) amax = fmaxf(amax, fabsf(bf16_to_float(x[i])));
    const float scale = amax > 0 ? amax / (fp8 ? 448.0f : 7.0f) : 1.0f;
    scales[first / group] = scale;
    if (fp8) {
      for (int i = 0; i < group; i += 16) {
        uint32_t word[4] = {0, 0, 0, 0};
        for (int j = 0; j < 16; ++j) {
          word[j / 4] |= static_cast<uint32_t>(float_to_e4m3(bf16_to_float(x[i + j]) / scale)) << (8 * (j % 4));
        }
        *reinterpret_cast<uint4*>(w.dst + first + i) = make_uint4(word[0], word[1], word[2], word[3]);
      }
    } else {
      for (int i = 0; i < group; i += 32) {
        uint32_t word[4] = {0, 0, 0, 0};
        for (int j = 0; j < 32; ++j) {
          word[j / 8] |= static_cast<uint32_t>(float_to_int4(bf16_to_float(x[i + j]) / scale)) << (4 * (j % 8));
        }
        *reinterpret_cast<uint4*>(w.dst + (first + i) / 2) = make_uint4(word[0], word[1], word[2], word[3]);
      }
    }
  }
}

__global__ void fill_random_bf16_kernel(uint16_t* dst, int64_t elems, uint64_t seed) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < elems;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    uint64_t z = seed + 0x9e3779b97f4a7c15ULL * static_cast<uint64_t>(i + 1);  // splitmix64
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    // Sum of four uniforms: roughly normal, mean 0, |x| < 2 before the scale.
    float s = 0;
    for (int k = 0; k < 4; ++k) s += static_cast<float>((z >> (16 * k)) & 0xffffU) * (1.0f / 65536.0f);
    dst[i] = float_to_bf16((s - 2.0f) * 3.0f);
  }
}

}  // namespace

cudaError_t launch_gather(const GatherPiece* pieces, int n, MirrorSpec spec, int blocks, int threads,
                          cudaStream_t stream, int unroll, uint32_t* landed, uint32_t seq, int flag_every) {
  if (n <= 0) return cudaSuccess;
  if (flag_every < 1) flag_every = 1;
  const int grid = blocks <= 0 || blocks > n ? n : blocks;
  switch (spec.format) {
    case MirrorFormat::Bf16:
      launch_format<MirrorFormat::Bf16>(pieces, n, spec.group, grid, threads, stream, unroll, landed, seq, flag_every);
      break;
    case MirrorFormat::Fp8E4m3:
      launch_format<MirrorFormat::Fp8E4m3>(pieces, n, spec.group, grid, threads, stream, unroll, landed, seq, flag_every);
      break;
    case MirrorFormat::Int4:
      launch_format<MirrorFormat::Int4>(pieces, n, spec.group, grid, threads, stream, unroll, landed, seq, flag_every);
      break;
  }
  return cudaGetLastError();
}

cudaError_t launch_mirror_write(const MirrorWrite* writes, int n, MirrorSpec spec, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  mirror_write_kernel<<<n, 128, 0, stream>>>(writes, n, spec);
  return cudaGetLastError();
}

cudaError_t launch_fill_random_bf16(uint16_t* dst, int64_t elems, uint64_t seed, cudaStream_t stream) {
  if (elems <= 0) return cudaSuccess;
  const int64_t blocks = (elems + 255) / 256;
  fill_random_bf16_kernel<<<static_cast<int>(blocks < 4096 ? blocks : 4096), 256, 0, stream>>>(dst, elems, seed);
  return cudaGetLastError();
}

}  // namespace kvlab::cuda
