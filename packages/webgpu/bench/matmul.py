"""PyTorch matmuls on the shapes of matmul.gpu.ts: x [rows][in] times W [out][in] transposed.

Prints one JSON line per (dtype, shape, rows): "f32" is FP32 without TF32 (the CUDA cores, what a
WGSL kernel's f32 FMAs compete with), "f16" is f16 on the tensor cores (what WGSL cannot use here).
  SHAPES=4096x4096,...   out x in (default the three 8B projection shapes and the 8B LM head)
  ROWS=64,128,...        batch sizes
"""
import json
import os

import torch

from torch_timing import cuda_ms

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
shapes = [tuple(int(v) for v in s.split("x")) for s in os.environ.get("SHAPES", "4096x4096,14336x4096,4096x14336,128256x4096").split(",")]
rows_list = [int(r) for r in os.environ.get("ROWS", "64,128,193,256,512").split(",")]
print(json.dumps({"kind": "torch", "version": torch.__version__, "device": torch.cuda.get_device_name()}))


for dtype, name in [(torch.float32, "f32"), (torch.float16, "f16")]:
    for out_dim, in_dim in shapes:
        w = torch.randn(out_dim, in_dim, device="cuda", dtype=dtype)
        for rows in rows_list:
            x = torch.randn(rows, in_dim, device="cuda", dtype=dtype)
            ms = cuda_ms(lambda: x @ w.t())
            print(json.dumps({"kind": "torch-matmul", "dtype": name, "outDim": out_dim, "inDim": in_dim, "rows": rows, "ms": ms, "tflops": 2 * rows * out_dim * in_dim / ms / 1e9}))
        del w
        torch.cuda.empty_cache()
