"""mpq.apply: copies, fake vs native agreement, plans, errors."""
import pytest
import torch
from torch import nn

from _tiny_models import tiny_llama
import mpq
import mpq.candidates as C
from mpq.application import FakeQuantLinear, apply
from mpq.application.native_cpu import NativeLinear


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 32))


def test_apply_returns_a_copy_and_leaves_the_model():
    m = mlp()
    x = torch.randn(3, 64)
    y0 = m(x)
    q = apply(m, {"0": "int8", "2": "base"}, mode="native")
    assert q is not m and isinstance(q[0], NativeLinear) and isinstance(q[2], nn.Linear)
    assert isinstance(m[0], nn.Linear)
    assert torch.equal(m(x), y0)
    f = apply(m, {"0": "int8"}, mode="fake")
    assert isinstance(f[0], FakeQuantLinear) and f[0].candidate.name == "int8"


def test_apply_fake_equals_candidate_functions():
    m = mlp()
    x = torch.randn(5, 64)
    f = apply(m, {"2": "w4a16"})
    c = C.get_candidate("w4a16")
    with torch.no_grad():
        h = torch.relu(m[0](x))
    want = m[4](torch.relu(nn.functional.linear(c.quantize_act(h), c.quantize_weight(m[2].weight.detach()), m[2].bias)))
    assert torch.equal(f(x), want)
    f(x).sum().backward()   # gradients flow (straight-through)
    assert f[0].weight.grad is not None


class PlanLike:
    def __init__(self, mapping):
        self.mapping = mapping


@pytest.mark.parametrize("cand", ["int8", "int8_static", "fp8", "w8a16", "w4a16", "bf16"])
def test_native_and_fake_agree_within_format_error(cand):
    m = mlp()
    x = torch.randn(8, 64)
    plan = PlanLike({"0": cand, "2": cand, "4": cand})
    scales = {k: 0.05 for k in ("0", "2", "4")}
    with torch.no_grad():
        ref = m(x)
        fake = apply(m, plan, "fake", act_scales=scales)(x)
        nat = apply(m, plan, "native", act_scales=scales)(x)
    qerr = (fake - ref).abs().max()
    # int8/fp8 kernels compute the same quantized model up to accumulation order; weight-only and bf16 kernels
    # also round activations (and scales) to bf16, an error of the order of the format's own error
    exact = cand in ("int8", "int8_static", "fp8")
    tol = 1e-5 * ref.abs().max() if exact else qerr
    assert (nat - fake).abs().max() <= tol, ((nat - fake).abs().max(), qerr)


def test_apply_on_tiny_llama_native_int8():
    m = tiny_llama()
    ids = torch.randint(0, 64, (1, 8))
    mapping = {n: "int8" for n, mod in m.named_modules() if isinstance(mod, nn.Linear)}
    with torch.no_grad():
        a = apply(m, mapping, "fake")(ids).logits
        b = apply(m, mapping, "native")(ids).logits
    assert (a - b).abs().max() < 1e-4


def test_a_plan_brings_its_static_scales_to_apply():
    m = mlp()
    x = torch.randn(3, 64)
    plan = mpq.Plan({"0": "int8_static", "2": "base", "4": "int8"}, 0.0, 0.0, act_scales={"0": 0.03})
    for mode in ("fake", "native"):
        from_plan = apply(m, plan, mode=mode)
        explicit = apply(m, plan.mapping, mode=mode, act_scales={"0": 0.03})
        assert torch.equal(from_plan(x), explicit(x))
        assert not torch.equal(from_plan(x), apply(m, plan.mapping, mode=mode, act_scales={"0": 0.06})(x))


def test_apply_errors():
    m = mlp()
    with pytest.raises(ValueError, match="not a module"):
        apply(m, {"9": "int8"})
    with pytest.raises(ValueError, match="not an nn.Linear"):
        apply(m, {"1": "int8"})
    with pytest.raises(ValueError, match="unknown candidate"):
        apply(m, {"0": "int9"})
    with pytest.raises(ValueError, match="act_scales"):
        apply(m, {"0": "int8_static"})
    with pytest.raises(ValueError, match="no native CPU kernel"):
        apply(m, {"0": "fp8_gaudi2"}, "native", act_scales={"0": 1.0})
    with pytest.raises(ValueError, match="mode"):
        apply(m, {}, "fast")
    with pytest.raises(ValueError, match="mapping"):
        apply(m, ["0"])


def test_native_models_share_the_untouched_weights_and_leave_the_model_alone():
    m = tiny_llama(layers=2, tie_word_embeddings=True)
    ids = torch.randint(0, m.config.vocab_size, (1, 8))
    with torch.no_grad():
        y0 = m(ids).logits
    q = apply(m, {"model.layers.0.mlp.down_proj": "int8"}, mode="native")
    untouched = m.model.layers[1].mlp.up_proj.weight
    assert q.model.layers[1].mlp.up_proj.weight.data_ptr() == untouched.data_ptr()   # no second copy
    assert q.lm_head.weight is q.model.embed_tokens.weight                         # ties kept
    q.to(torch.float64)                                                             # the copy's own tensors
    assert untouched.dtype == torch.float32 and isinstance(m.model.layers[0].mlp.down_proj, nn.Linear)
    with torch.no_grad():
        assert torch.equal(m(ids).logits, y0)
    f = apply(m, {"model.layers.0.mlp.down_proj": "int8"}, mode="fake")             # may be trained: a deep copy
    assert f.model.layers[1].mlp.up_proj.weight.data_ptr() != untouched.data_ptr()


class SharedTwice(nn.Module):
    """One Linear under two attributes, called twice: both calls must run the quantized module."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(16, 16)
        self.b = self.a

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


@pytest.mark.parametrize("name", ["a", "b"])
def test_a_module_under_two_names_is_replaced_under_both(name):
    torch.manual_seed(0)
    m = SharedTwice()
    x = torch.randn(3, 16)
    for mode in ("fake", "native"):
        q = apply(m, {name: "int8"}, mode=mode)
        assert q.a is q.b and not isinstance(q.a, nn.Linear)
        lin = m.a
        ref = FakeQuantLinear(lin, C.get_candidate("int8"), None)
        with torch.no_grad():
            assert torch.allclose(q(x), ref(torch.relu(ref(x))), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="are one module, mapped to 'int8' and 'w8a16'"):
        apply(m, {"a": "int8", "b": "w8a16"})
