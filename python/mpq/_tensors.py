"""Zero-copy views of torch tensors as numpy arrays for the C++ core (bf16/fp16 travel as uint16 bits)."""
from __future__ import annotations

import numpy as np
import torch

DTYPE_TAGS = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
SUPPORTED_DTYPES = tuple(DTYPE_TAGS)


def as_numpy(t: torch.Tensor) -> np.ndarray:
    """A 1-D numpy view of a contiguous CPU tensor: float32 stays float32, bf16/fp16 become uint16 bits."""
    flat = t.reshape(-1)
    if t.dtype == torch.float32:
        return flat.numpy()
    return flat.view(torch.int16).numpy().view(np.uint16)
