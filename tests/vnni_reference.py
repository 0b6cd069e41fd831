"""The activation side of llamita's VNNI kernels (kernels/csrc/vnni.h), restated in torch for
the kernel tests (test_q4_vnni.py, test_q8_vnni.py)."""

from __future__ import annotations

import torch


def int8_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (m, k) -> (xq (m, k/32, 32), d (m, k/32)), both float64 holding the kernel's values:
    x as the kernel takes it (float32 or bfloat16, other dtypes through float32), then per group
    of 32 xq = round-half-even(x * 127 / max|x|) and d = max|x| / 127, each computed in float32
    as the C code does."""
    m, k = x.shape
    xb = x.float().view(m, k // 32, 32)
    amax = xb.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, torch.tensor(127.0) / amax, torch.zeros(()))  # float32, as in C
    xq = torch.round(xb * inv).clamp(-128, 127).double()  # round half to even, like cvtps2dq
    d = (amax / 127.0).double().squeeze(-1)  # float32 division, then exact in float64
    return xq, d
