"""PyTorch scaled_dot_product_attention on dense f16 KV, the same shapes as attention.gpu.ts."""
import json
import os

import torch
import torch.nn.functional as F

from torch_timing import cuda_ms

H, KVH, D = 32, 8, 128
batches = [int(x) for x in os.environ.get("BATCHES", "1,8,32,128").split(",")]
contexts = [int(x) for x in os.environ.get("CONTEXTS", "1024,4096,16384,32768").split(",")]
print(json.dumps({"kind": "torch", "version": torch.__version__, "device": torch.cuda.get_device_name()}))


# READ_BYTES (0: off): PyTorch reading that many bytes (a sum of f16 into f32, and a max of
# int32), attention.gpu.ts's read ceiling on the same bytes.
read_bytes = int(os.environ.get("READ_BYTES", "0"))
if read_bytes > 0:
    x = torch.randn(read_bytes // 2, device="cuda", dtype=torch.float16)
    for name, fn in [("sum-f16", lambda: x.sum(dtype=torch.float32)), ("max-i32", lambda: x.view(torch.int32).max())]:
        ms = cuda_ms(fn)
        print(json.dumps({"kind": "torch-read", "op": name, "bytes": read_bytes, "ms": ms, "gbps": read_bytes / ms / 1e6}))
    del x
    torch.cuda.empty_cache()
for b in batches:
    for t in contexts:
        if 2 * b * KVH * t * D * 2 > 40 * 2**30:  # K + V over 40 GiB: beyond the WebGPU sweep too
            continue
        q = torch.randn(b, H, 1, D, device="cuda", dtype=torch.float16)
        k = torch.randn(b, KVH, t, D, device="cuda", dtype=torch.float16)
        v = torch.randn(b, KVH, t, D, device="cuda", dtype=torch.float16)
        ms = cuda_ms(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True))
        kv_bytes = 2 * b * KVH * t * D * 2
        print(json.dumps({"kind": "sdpa", "batch": b, "ctx": t, "ms": ms, "kvBytes": kv_bytes, "gbps": kv_bytes / ms / 1e6}))
        del q, k, v
        torch.cuda.empty_cache()
