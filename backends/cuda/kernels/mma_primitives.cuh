// Warp-level building blocks of the tensor-core kernels (sm_80+ instructions, used on sm_90):
// asynchronous 16-byte copies, bulk copies and tensor copies (mbarrier-completed) into shared
// memory, ldmatrix and mma.m16n8k16 with bf16 operands and float32 accumulators, and bf16
// packing. Header-only and device-only, so each kernel file that includes it gets its own
// inlined copies.
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
/// cp_async_16 with the L2 prefetch hint: the L2 fetches the whole 256-byte block the copy
/// falls in (the next lanes' pieces), so DRAM sees fewer, longer requests.
__device__ __forceinline__ void cp_async_16_l2_256(void* smem, const void* gmem, int src_bytes) {
  const auto s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
/// Waits until at most N committed groups of this thread are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// ---- bulk copies (the TMA unit, sm_90) completed on an mbarrier ---------------------------
// A bulk copy moves a contiguous multiple of 16 bytes from global to shared memory through
// the asynchronous proxy; its bytes count down the barrier's transaction count, and a phase
// completes when every expected arrival came and every expected byte landed.

__device__ __forceinline__ unsigned smem_address(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void mbarrier_init(uint64_t* bar, unsigned arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_address(bar)), "r"(arrivals) : "memory");
}
/// Makes initialised barriers visible to the asynchronous proxy (the bulk copies).
__device__ __forceinline__ void mbarrier_init_fence() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
__device__ __forceinline__ void mbarrier_arrive_expect_tx(uint64_t* bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_address(bar)), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void mbarrier_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_address(bar)) : "memory");
}
/// Spins until the barrier's phase with this parity has completed.
__device__ __forceinline__ void mbarrier_wait(uint64_t* bar, unsigned parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "KVLAB_MBAR_WAIT_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra KVLAB_MBAR_WAIT_%=;\n"
      "}\n" ::"r"(smem_address(bar)),
      "r"(parity)
      : "memory");
}
/// Orders this thread's earlier generic-proxy accesses of shared memory (reads of a stage)
/// before its later asynchronous-proxy writes (the bulk copy that refills it).
__device__ __forceinline__ void fence_proxy_async_shared() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
__device__ __forceinline__ void bulk_copy_to_shared(void* dst, const void* src, unsigned bytes, uint64_t* bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
                   smem_address(dst)),
               "l"(src), "r"(bytes), "r"(smem_address(bar))
               : "memory");
}

// ---- tensor copies (TMA, sm_90): a box of a tensor map into shared memory ---------------
// The map (a CUtensorMap kernel parameter, __grid_constant__) describes the global tensor, the
// box and the shared-memory swizzle; coordinates are signed element indices, innermost first,
// and elements outside the tensor's extents arrive as zeros (a negative coordinate included).
// The whole box's bytes count down the barrier's transaction count.

/// Fetches the tensor map's descriptor ahead of the first copy that uses it.
__device__ __forceinline__ void prefetch_tensor_map(const void* map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}
__device__ __forceinline__ void tensor_copy_2d_to_shared(void* dst, const void* map, int c0, int c1, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(
          smem_address(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(smem_address(bar))
      : "memory");
}
__device__ __forceinline__ void tensor_copy_3d_to_shared(void* dst, const void* map, int c0, int c1, int c2,
                                                         uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], "
      "[%5];\n" ::"r"(smem_address(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(smem_address(bar))
      : "memory");
}
// ---- programmatic dependent launch (sm_90) --------------------------------------------------
/// Lets the next kernel of the stream, if launched as a programmatic dependent, be scheduled
/// once every CTA of this grid has called this or exited.
__device__ __forceinline__ void grid_dependents_launch() { asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory"); }
/// Waits until the grids this one depends on have completed and their writes are visible (at
/// once when it was not launched as a programmatic dependent).
__device__ __forceinline__ void grid_dependency_wait() { asm volatile("griddepcontrol.wait;\n" ::: "memory"); }

/// An L2 cache policy that marks what it covers as first to evict (streamed data that is read
/// once), for the copies' .L2::cache_hint operand.
__device__ __forceinline__ uint64_t l2_evict_first_policy() {
  uint64_t policy;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
  return policy;
}
__device__ __forceinline__ void tensor_copy_2d_to_shared_hint(void* dst, const void* map, int c0, int c1, uint64_t* bar,
                                                              uint64_t policy) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1, {%2, "
      "%3}], [%4], %5;\n" ::"r"(smem_address(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(smem_address(bar)), "l"(policy)
      : "memory");
}
__device__ __forceinline__ void tensor_copy_3d_to_shared_hint(void* dst, const void* map, int c0, int c1, int c2,
                                                              uint64_t* bar, uint64_t policy) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1, {%2, "
      "%3, %4}], [%5], %6;\n" ::"r"(smem_address(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(smem_address(bar)), "l"(policy)
      : "memory");
}

/// Byte offset of the 16-byte piece `chunk` (0-7) of row `row` in a tile written with the
/// 128-byte swizzle (rows of 128 bytes, tile 1024-byte aligned): piece c of row r lands at piece
/// c ^ (r % 8), so the 8 rows an ldmatrix reads at one piece fall in 8 different bank groups.
__device__ __forceinline__ int swizzle128_offset(int row, int chunk) { return row * 128 + ((chunk ^ (row & 7)) << 4); }

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
