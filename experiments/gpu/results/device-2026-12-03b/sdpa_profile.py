"""cuDNN SDPA at one decode point under an NVTX range, for Nsight Compute (ncu --nvtx)."""
import sys
import torch
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend

ctx = int(sys.argv[1]) if len(sys.argv) > 1 else 512 << 10
batch = int(sys.argv[2]) if len(sys.argv) > 2 else 1
q = torch.randn(batch, 32, 1, 128, device="cuda", dtype=torch.bfloat16)
k = torch.randn(batch, 8, ctx, 128, device="cuda", dtype=torch.bfloat16)
v = torch.randn(batch, 8, ctx, 128, device="cuda", dtype=torch.bfloat16)
with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
    for _ in range(3):
        F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    torch.cuda.synchronize()
    torch.cuda.nvtx.range_push("sdpa")
    F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    torch.cuda.nvtx.range_pop()
    torch.cuda.synchronize()
print("ok", ctx, batch)
