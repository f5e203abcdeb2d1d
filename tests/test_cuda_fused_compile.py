"""The fused CUDA kernels compile, for an H100/H200 (sm_90), without FMA contraction: no GPU needed, only Triton.

Why: with contraction, dequantize's acc · (s_x · s_w) + bias became one FMA (rounded once) where torch multiplies
then adds (rounded twice); on an H200 that gave 1-ulp differences from the torch-ops path. The kernels are compiled
here ahead of time with the launch options mpq uses (``cuda_fused.LAUNCH_OPTIONS``) and the PTX is searched for
``fma``; the same kernels compiled with contraction on must show it, so the search is known to find it.
Skipped where Triton is absent (CPU builds of torch do not bring it; CUDA builds do)."""
import re

import pytest

triton = pytest.importorskip("triton", reason="Triton is not installed (CUDA builds of torch bring it)")

from mpq.application import cuda_fused  # noqa: E402

FMA = re.compile(r"^\s*(?:@%p\d+\s+)?fma\.", re.M)


def _ptx(fn, signature, constexprs, **options):
    pointers = [n for n, t in signature.items() if t.startswith("*")]
    # what a launch with torch tensors specialises: 16-byte aligned pointers
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in pointers}
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
        target = GPUTarget("cuda", 90, 32)
    except (ImportError, TypeError) as e:  # an older Triton, with another ahead-of-time API (3.6–3.9 have this one)
        pytest.skip(f"Triton {triton.__version__}: no ahead-of-time compile API as used here ({e})")
    return triton.compile(src, target=target, options=options).asm["ptx"]  # a compile error fails the test


def _dequantize_ptx(out_dtype, bias, **options):
    _, deq = cuda_fused._kernels()
    bm, bn = cuda_fused.DEQUANT_TILE
    sig = {"acc_ptr": "*i32", "sa_ptr": "*fp32", "ws_ptr": "*fp32", "bias_ptr": "*fp32", "y_ptr": f"*{out_dtype}",
           "M": "i32", "N": "i32", "stride_acc": "i32", "stride_y": "i32",
           "HAS_BIAS": "constexpr", "BM": "constexpr", "BN": "constexpr"}
    return _ptx(deq, sig, {"HAS_BIAS": bias, "BM": bm, "BN": bn}, **options)


@pytest.mark.parametrize("out_dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("bias", [True, False])
def test_dequantize_multiplies_then_adds(out_dtype, bias):
    ptx = _dequantize_ptx(out_dtype, bias, **cuda_fused.LAUNCH_OPTIONS)
    assert not FMA.findall(ptx), "dequantize contracts a multiply and an add into an FMA"
    if bias:
        assert re.search(r"\badd\.rn\.f32", ptx), "the bias is not added in its own rounded step"


def test_the_search_finds_contraction_when_it_is_allowed():
    options = dict(cuda_fused.LAUNCH_OPTIONS, enable_fp_fusion=True)
    assert FMA.findall(_dequantize_ptx("fp32", True, **options))


@pytest.mark.parametrize("x_dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("int8", [True, False])
@pytest.mark.parametrize("static", [True, False])
def test_quantize_rows_has_no_fma_and_keeps_its_rounding_step(x_dtype, int8, static):
    quant, _ = cuda_fused._kernels()
    sig = {"x_ptr": f"*{x_dtype}", "q_ptr": "*i8" if int8 else "*fp8e4nv", "s_ptr": "*fp32", "static_ptr": "*fp32",
           "M": "i32", "K": "i32", "stride_x": "i32", "stride_q": "i32",
           "QMAX": "constexpr", "INT8": "constexpr", "STATIC": "constexpr", "BLOCK": "constexpr"}
    const = {"QMAX": 127.0 if int8 else 448.0, "INT8": int8, "STATIC": static, "BLOCK": cuda_fused.QUANT_BLOCK}
    ptx = _ptx(quant, sig, const, **cuda_fused.LAUNCH_OPTIONS)
    assert not FMA.findall(ptx)
    if int8:  # round half to even by adding and subtracting 1.5 * 2**23 (0x4B400000): neither folded away
        assert re.search(r"add\.rn\.f32\s+%r\d+, %r\d+, 0f4B400000", ptx)
        assert re.search(r"add\.rn\.f32\s+%r\d+, %r\d+, 0fCB400000", ptx)
