"""GPU timing shared by the PyTorch reference scripts (sdpa.py, matmul.py)."""
import torch


def cuda_ms(fn, iters=20):
    """GPU time of one call of fn in ms: 3 warm-up calls, then iters calls between CUDA events."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters
