"""Independent facts about the formats, written from their specs, shared by the format tests."""
import torch

TORCH_FP8 = {  # mpq format -> (torch dtype, max)
    "fp8_e4m3": (torch.float8_e4m3fn, 448.0),
    "fp8_e4m3fnuz": (torch.float8_e4m3fnuz, 240.0),
    "fp8_e5m2": (torch.float8_e5m2, 57344.0),
}
TORCH_CASTS = {"bf16": torch.bfloat16, "fp16": torch.float16}
INPUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def every_16bit(dtype):
    """All 65,536 values of a 16-bit float dtype, NaNs and infinities included."""
    return torch.arange(-2**15, 2**15, dtype=torch.int32).to(torch.int16).view(dtype)


def gaudi2_e4m3_grid():
    """Non-negative Gaudi-2 E4M3 values in code order: IEEE-style, bias 7, exponent field 15 reserved."""
    values = []
    for e in range(15):
        for m in range(8):
            values.append((m / 8) * 2.0**-6 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7))
    return torch.tensor(values, dtype=torch.float64)


def round_to_grid(x, grid):
    """Round-to-nearest, ties to the even code, saturating at the grid's ends; NaN stays NaN."""
    a = x.double().abs().clamp(max=grid[-1].item())
    hi = torch.searchsorted(grid, a).clamp(max=len(grid) - 1)
    lo = (hi - 1).clamp(min=0)
    d_lo, d_hi = a - grid[lo], grid[hi] - a
    pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (hi % 2 == 0))
    r = torch.where(pick_hi, grid[hi], grid[lo])
    r = torch.where(x.signbit(), -r, r)  # the sign survives rounding to zero (-0)
    return torch.where(x.isnan(), torch.tensor(float("nan"), dtype=torch.float64), r)


def special_fp32(fmt_max=448.0):
    """±0, subnormal fp32, ±max, just above max, overflow, ±Inf, NaN."""
    tiny = torch.finfo(torch.float32).tiny
    vals = [0.0, -0.0, tiny, -tiny, tiny / 4, 1e-30, -1e-30, fmt_max, -fmt_max, fmt_max * 1.01, fmt_max * 1.06,
            -fmt_max * 1.06, 1e30, -1e30, 3e38, float("inf"), float("-inf"), float("nan"), 1.0, -1.0]
    return torch.tensor(vals, dtype=torch.float32)


def grid_midpoints(dtype):
    """Exact midpoints (ties) between adjacent representable values of an fp8 dtype, as float32."""
    codes = torch.arange(0, 256, dtype=torch.int32).to(torch.uint8).view(dtype).float()
    pos = codes[codes.isfinite() & (codes >= 0)].unique().sort().values.double()
    mids = ((pos[1:] + pos[:-1]) / 2).float()
    assert torch.equal(mids.double(), (pos[1:] + pos[:-1]) / 2), "midpoints must be exact in fp32"
    return torch.cat([mids, -mids])
