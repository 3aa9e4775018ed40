// Warp-level building blocks of the tensor-core kernels (sm_80+ instructions, used on sm_90):
// asynchronous 16-byte copies into shared memory, ldmatrix and mma.m16n8k16 with bf16
// operands and float32 accumulators, and bf16 packing. Header-only and device-only, so each
// kernel file that includes it gets its own inlined copies.
//
// Fragment layouts of mma.m16n8k16 (g = lane / 4, c = lane % 4), which the kernels rely on:
//   A (16×16, row-major): a0 = (row g, cols 2c..2c+1), a1 = (row g+8, same cols),
//                          a2 = (row g, cols 8+2c..), a3 = (row g+8, cols 8+2c..)
//   B (16×8, "col"):       b0 = (rows 2c..2c+1, col g), b1 = (rows 8+2c.., col g)
//   C/D (16×8, float):     c0,c1 = (row g, cols 2c, 2c+1), c2,c3 = (row g+8, same cols)
// So the C fragments of two adjacent 16×8 tiles are, packed to bf16, exactly the A fragment of
// the 16×16 tile they form: the softmax probabilities feed P·V without going through memory.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace kvlab::cuda::mma {

/// Copies 16 bytes to shared memory asynchronously; src_bytes < 16 zero-fills the rest (0: no
/// global read at all, so an address past the end is never touched).
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, int src_bytes) {
  const auto s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
/// Waits until at most N committed groups of this thread are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

/// c += A·B for one 16×8×16 tile (bf16 in, float32 accumulate).
__device__ __forceinline__ void mma_bf16_16816(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                               uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

/// Four 8×8 b16 matrices from shared memory; lane l gives the address of row l % 8 of matrix
/// l / 8, and receives in r[i] elements (row l / 4, cols 2(l % 4), +1) of matrix i.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem_row) {
  const auto a = static_cast<unsigned>(__cvta_generic_to_shared(smem_row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a)
               : "memory");
}

/// As ldmatrix_x4, each matrix transposed: lane l receives (rows 2(l % 4), +1; col l / 4).
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem_row) {
  const auto a = static_cast<unsigned>(__cvta_generic_to_shared(smem_row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a)
               : "memory");
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x = lo (low 16 bits)
  return *reinterpret_cast<const uint32_t*>(&v);
}

__device__ __forceinline__ float2 unpack_bf16x2(uint32_t w) {
  return make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xffff0000U));
}

}  // namespace kvlab::cuda::mma
