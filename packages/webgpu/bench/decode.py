"""A Llama decode step in PyTorch, the reference for decode.gpu.ts: the same shapes (SHAPE=8b|1b),
random f16 weights and a dense f16 KV cache, each (batch, context) pair one run of steps.

Per step, as LlamaModel.forward + argmax: embedding; per layer RMSNorm, q/k/v projections, RoPE
(rotate-half), the new K/V written at position `context` of a static cache, SDPA over the
context + 1 keys (GQA), output projection, residual, RMSNorm, SwiGLU MLP, residual; final
RMSNorm, LM head, argmax. Every step writes the same cache slot, so shapes are static and the
step can be captured as a CUDA graph. Prints one JSON line per pair: "eagerMs" (PyTorch eager,
one Python launch per op, as a plain transformers decode) and "graphMs" (the same ops replayed
as a CUDA graph: no launch gaps, the card's own speed with cuBLAS and SDPA on tensor cores).

  PAIRS=6x4096,193x64   batch x context pairs (default: decode.gpu.ts's sequences at each rate,
                        the context divided by the rate, i.e. what a dense cache of the same
                        memory holds)
"""
import json
import os

import torch
import torch.nn.functional as F

from torch_timing import cuda_ms

SHAPES = {
    "8b": dict(hidden=4096, layers=32, heads=32, kv=8, dim=128, ffn=14336, vocab=128256, theta=500000.0),
    "1b": dict(hidden=2048, layers=16, heads=32, kv=8, dim=64, ffn=8192, vocab=128256, theta=500000.0),
}
DEFAULT_PAIRS = {
    "8b": "1x4096,6x4096,12x2048,23x1024,43x512,77x256,129x128,193x64",
    "1b": "1x16384,6x16384,12x8192,24x4096,47x2048,91x1024,171x512,256x256",
}
shape_name = os.environ.get("SHAPE", "8b")
s = SHAPES[shape_name]
pairs = [tuple(int(v) for v in p.split("x")) for p in os.environ.get("PAIRS", DEFAULT_PAIRS[shape_name]).split(",")]
dev, f16 = "cuda", torch.float16
torch.manual_seed(0)
print(json.dumps({"kind": "torch", "version": torch.__version__, "device": torch.cuda.get_device_name(), "shape": shape_name}))


def rand(*shape):
    return (torch.randn(*shape, device=dev, dtype=torch.float32) * 0.02).to(f16)


H, KV, D, HID = s["heads"], s["kv"], s["dim"], s["hidden"]
# Weights: W [out][in] as in the GGUF files, so each projection is x @ W.T.
embed = rand(s["vocab"], HID)
layers = [
    dict(
        attn_norm=torch.ones(HID, device=dev, dtype=f16),
        wqkv=rand(H * D + 2 * KV * D, HID),  # q, k, v rows stacked: one matmul, as fused stacks do
        wo=rand(HID, H * D),
        ffn_norm=torch.ones(HID, device=dev, dtype=f16),
        w13=rand(2 * s["ffn"], HID),  # gate and up stacked
        w2=rand(HID, s["ffn"]),
    )
    for _ in range(s["layers"])
]
out_norm = torch.ones(HID, device=dev, dtype=f16)
lm_head = rand(s["vocab"], HID)


def rms(x, w):
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-5)).to(f16) * w


def rope(x, cos, sin):  # x [B, heads, 1, D], rotate-half
    x1, x2 = x[..., : D // 2], x[..., D // 2 :]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


for batch, context in pairs:
    try:
        # K/V cache [layer][B][kv][context + 1][D]; the step writes slot `context`.
        kc = [torch.randn(batch, KV, context + 1, D, device=dev, dtype=f16) for _ in range(s["layers"])]
        vc = [torch.randn(batch, KV, context + 1, D, device=dev, dtype=f16) for _ in range(s["layers"])]
        tokens = torch.randint(0, s["vocab"], (batch,), device=dev)
        inv = 1.0 / (s["theta"] ** (torch.arange(0, D, 2, device=dev, dtype=torch.float32) / D))
        ang = context * inv
        cos, sin = ang.cos().to(f16), ang.sin().to(f16)  # [D / 2]: rotate-half pairs i and i + D / 2

        def step():
            x = embed[tokens]  # [B, HID]
            for li, w in enumerate(layers):
                h = rms(x, w["attn_norm"])
                qkv = h @ w["wqkv"].T
                q = qkv[:, : H * D].view(batch, H, 1, D)
                k = qkv[:, H * D : H * D + KV * D].view(batch, KV, 1, D)
                v = qkv[:, H * D + KV * D :].view(batch, KV, 1, D)
                q, k = rope(q, cos, sin), rope(k, cos, sin)
                kc[li][:, :, context : context + 1] = k
                vc[li][:, :, context : context + 1] = v
                a = F.scaled_dot_product_attention(q, kc[li], vc[li], enable_gqa=True)
                x = x + a.reshape(batch, H * D) @ w["wo"].T
                h = rms(x, w["ffn_norm"])
                g, u = (h @ w["w13"].T).chunk(2, dim=-1)
                x = x + (F.silu(g) * u) @ w["w2"].T
            logits = rms(x, out_norm) @ lm_head.T
            tokens.copy_(logits.argmax(-1))

        eager = cuda_ms(step, iters=10)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        graph_ms = cuda_ms(graph.replay, iters=20)
        print(
            json.dumps(
                {
                    "kind": "torch-decode",
                    "shape": shape_name,
                    "batch": batch,
                    "context": context,
                    "eagerMs": eager,
                    "graphMs": graph_ms,
                    "eagerTokensPerSecond": batch * 1000 / eager,
                    "graphTokensPerSecond": batch * 1000 / graph_ms,
                }
            )
        )
        del graph, kc, vc
        torch.cuda.empty_cache()
    except Exception as e:  # report and go on to the next pair
        print(json.dumps({"kind": "torch-decode-error", "batch": batch, "context": context, "error": str(e)[:300]}))
