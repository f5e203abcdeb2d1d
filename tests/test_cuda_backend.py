"""The cuda backend's modules (the kernels ``profile(backend="cuda")`` times and ``apply(mode="native")`` installs
on a CUDA model) against mpq's own quantizers. torch._scaled_mm and torch._int_mm also run on CPU tensors, so the
arithmetic is checked everywhere; timing, CUDA events and the model-level paths run where a GPU is."""
import numpy as np
import pytest
import torch
from torch import nn

from _tiny_models import tiny_llama
import mpq.candidates as C
from mpq.application import apply
from mpq.application import cuda_fused, native_cuda
from mpq.profiling.backends import get_backend
from mpq.profiling import profile

cuda = get_backend("cuda")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")


def runs_here(device, cand):
    """Whether torch can run the candidate's GEMM on this device: before torch 2.13 (or so) _scaled_mm on the CPU
    takes only per-tensor scales."""
    if device != "cpu" or C.get_candidate(cand).weight_granularity == "tensor":
        return True
    a = torch.ones(16, 16).to(torch.float8_e4m3fn)
    try:
        torch._scaled_mm(a, a.t(), scale_a=torch.ones(16, 1), scale_b=torch.ones(1, 16), out_dtype=torch.bfloat16)
    except RuntimeError:
        return False
    return True


def reference(lin, x, cand_name, act_scale=None):
    """F.linear(Q_act(x), Q(W)) + b in float64 with the candidate's own quantizers (mpq.fake_quantize)."""
    cand = C.get_candidate(cand_name)
    xq = cand.quantize_act(x.detach().float().cpu(), act_scale).double()
    wq = cand.quantize_weight(lin.weight.detach().float().cpu()).double()
    b = None if lin.bias is None else lin.bias.detach().double().cpu()
    return nn.functional.linear(xq, wq, b)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cand,static", [("int8", None), ("int8_static", 0.02), ("fp8", None),
                                         ("fp8_static", 0.01)])
@pytest.mark.parametrize("rows", [1, 5, 40])
def test_kernels_compute_the_candidates_quantized_linear(device, cand, static, rows):
    if not runs_here(device, cand):
        pytest.skip(f"this torch's _scaled_mm has no row-wise scales on {device}")
    torch.manual_seed(rows)
    lin = nn.Linear(96, 48).to(device)
    x = torch.randn(rows, 96, device=device)
    m = cuda.make_module(lin, cand, static)
    with torch.no_grad():
        y = m(x)
    ref = reference(lin, x, cand, static)
    assert y.dtype == x.dtype and y.shape == (rows, 48)
    err = (y.double().cpu() - ref).abs()
    scale = ref.abs().max()
    if cand.startswith("int8"):   # exact int32 sums, dequantized in float32
        assert err.max() <= 1e-5 * scale, err.max()
    else:                         # fp32 accumulation, rounded once to bf16
        assert err.max() <= 2 ** -8 * scale, err.max() / scale


@pytest.mark.parametrize("device", DEVICES)
def test_kernels_keep_leading_dimensions_and_bf16(device):
    lin = nn.Linear(64, 32, bias=False).to(device, torch.bfloat16)
    x = torch.randn(2, 3, 64, device=device, dtype=torch.bfloat16)
    for cand in filter(lambda c: runs_here(device, c), cuda.kernels):
        y = cuda.make_module(lin, cand, 0.05 if cand.endswith("static") else None)(x)
        assert y.shape == (2, 3, 32) and y.dtype == torch.bfloat16, cand


def test_kernel_shapes_the_gpu_cannot_run_are_refused():
    with pytest.raises(ValueError, match="multiples of 16"):
        cuda.make_module(nn.Linear(60, 32), "fp8")
    assert not cuda.supported("w4a16") and not cuda.supported("fp8_e5m2")


def test_the_fused_quantizer_is_for_cuda_tensors_and_its_switch_is_checked(monkeypatch):
    assert not cuda_fused.enabled(torch.zeros(2, 16))
    monkeypatch.setenv("MPQ_CUDA_QUANT", "torch")
    assert cuda.extra_meta() == {"activation_quantizer": "torch ops"}
    monkeypatch.setenv("MPQ_CUDA_QUANT", "cutlass")
    with pytest.raises(ValueError, match="MPQ_CUDA_QUANT"):
        cuda_fused.enabled(torch.zeros(2, 16))


@needs_cuda
@pytest.mark.parametrize("cand,static", [("int8", None), ("int8_static", 0.02), ("fp8", None),
                                         ("fp8_static", 0.01)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_quantizer_gives_the_bits_of_the_torch_ops(monkeypatch, cand, static, dtype):
    if cuda_fused._kernels() is None:
        pytest.skip("triton is not installed")
    torch.manual_seed(1)
    for rows, k in [(1, 96), (5, 4160), (40, 96), (300, 1040)]:
        lin = nn.Linear(k, 64).to("cuda", dtype)
        m = cuda.make_module(lin, cand, static)
        x = torch.randn(rows, k, device="cuda", dtype=dtype) * 3
        x[0, :8] = 0.5 * torch.arange(8)   # exact halves and zeros among the values
        with torch.no_grad():
            assert cuda_fused.enabled(x)
            fused = m(x)
            monkeypatch.setenv("MPQ_CUDA_QUANT", "torch")
            plain = m(x)
            monkeypatch.delenv("MPQ_CUDA_QUANT")
        assert torch.equal(fused, plain), (cand, rows, k, (fused.float() - plain.float()).abs().max())


def test_apply_native_on_a_cpu_model_still_uses_the_cpu_kernels():
    from mpq.application.native_cpu import NativeLinear
    q = apply(nn.Sequential(nn.Linear(64, 32)), {"0": "int8"}, mode="native")
    assert isinstance(q[0], NativeLinear)


@needs_cuda
def test_apply_native_on_a_cuda_model_installs_the_cuda_kernels():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32)).to("cuda", torch.bfloat16)
    x = torch.randn(8, 64, device="cuda", dtype=torch.bfloat16)
    q = apply(m, {"0": "fp8", "2": "int8"}, mode="native")
    f = apply(m, {"0": "fp8", "2": "int8"}, mode="fake")
    assert isinstance(q[0], native_cuda.CudaFp8Linear) and isinstance(q[2], native_cuda.CudaInt8Linear)
    assert isinstance(m[0], nn.Linear)
    with torch.no_grad():
        yq, yf = q(x).float(), f(x).float()
    assert (yq - yf).abs().max() <= 0.02 * yf.abs().max()
    with pytest.raises(ValueError, match="no CUDA kernel"):
        apply(m, {"0": "w4a16"}, mode="native")


@needs_cuda
def test_cuda_clock_times_gpu_work():
    clk = cuda.clock()
    a = torch.randn(2048, 2048, device="cuda")
    t0 = clk.mark()
    for _ in range(5):
        a = a @ a
        a = a / a.norm()
    t1 = clk.mark()
    clk.sync()
    assert 0 < clk.seconds(t0, t1) < 10


@needs_cuda
@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_cuda_profile_of_a_causal_lm(phase):
    m = tiny_llama(layers=2)
    ids = torch.randint(0, m.config.vocab_size, (1, 24))
    t = profile(m, ids, ["fp8", "int8"], backend="cuda", phase=phase, repeats=5)
    assert t.meta["base_format"] == "bf16" and t.meta["clock"] == "CudaClock"
    assert t.meta["activation_quantizer"] == cuda_fused.quantizer()
    assert t.baseline_seconds > 0 and all(np.isfinite(s.gain).all() for s in t.subgraphs)
    assert t.meta["additivity"]["passes"] > 0
    # the table's configurations run: a plan made of each sub-graph's last configuration applies on the GPU
    mapping = {}
    for i, s in enumerate(t.subgraphs):
        mapping.update(t.config_mapping(i, len(s.gain) - 1))
    q = apply(m.to("cuda", torch.bfloat16), mapping, mode="native")
    with torch.no_grad():
        assert torch.isfinite(q(ids.cuda()).logits.float()).all()


def test_the_accelerator_copy_is_bf16_and_leaves_the_model_alone():
    from mpq.models import prepare_bf16_on
    m = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    w0 = m[0].weight.detach().clone()
    work, ex = prepare_bf16_on("cpu", m, {"x": torch.randn(2, 16), "ids": torch.arange(3)})
    assert work[0].weight.dtype == torch.bfloat16 and ex["x"].dtype == torch.bfloat16 and ex["ids"].dtype == torch.int64
    assert m[0].weight.dtype == torch.float32 and torch.equal(m[0].weight, w0) and m.training
    m16 = m.to(torch.bfloat16)
    work16, _ = prepare_bf16_on("cpu", m16, torch.zeros(1, 16))
    assert work16[2].weight.data_ptr() == m16[2].weight.data_ptr()   # already bf16 there: shared, not copied
    assert not work16.training and m16.training
