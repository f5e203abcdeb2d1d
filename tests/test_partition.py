"""mpq.partition on tiny models built here: exact expected sub-graphs, ties, fallback, errors."""

import pytest
import torch
from torch import nn

from _tiny_models import tiny_gemma3, tiny_llama as shared_tiny_llama
from mpq.partitioning import Subgraph, partition


def layers_of(sgs):
    return [sg.layers for sg in sgs]


def test_sequential_mlp_one_subgraph_per_linear():
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    sgs = partition(m, torch.randn(3, 8))
    assert layers_of(sgs) == [("0",), ("2",), ("4",)]
    assert [sg.name for sg in sgs] == ["0", "2", "4"]
    assert all(sg.ties == () and sg.method == "export" for sg in sgs)
    assert [sg.start for sg in sgs] == ["0", "1", "3"]  # the ReLU before a Linear joins its segment


class ResidualMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.up = nn.Linear(16, 32)
        self.down = nn.Linear(32, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = self.inp(x)
        h = h + self.down(torch.relu(self.up(h)))   # no cut inside the residual block
        return self.head(h)


def test_residual_block_is_one_subgraph():
    sgs = partition(ResidualMLP(), torch.randn(2, 8))
    assert layers_of(sgs) == [("inp",), ("up", "down"), ("head",)]


class Parallel(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(8)
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)
        self.c = nn.Linear(8, 8)
        self.out = nn.Linear(8, 8)

    def forward(self, x):
        h = self.norm(x)
        return x + self.out(self.a(h) * torch.sigmoid(self.b(h)) + self.c(h))


def test_layers_reading_the_same_input_are_tied():
    sgs = partition(Parallel(), torch.randn(2, 5, 8))
    assert len(sgs) == 1
    assert sgs[0].layers == ("a", "b", "c", "out")
    assert sgs[0].ties == (("a", "b", "c"),)
    assert sgs[0].groups == (("a", "b", "c"), ("out",))


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc1 = nn.Linear(4 * 6 * 6, 16)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        x = x + torch.relu(self.c2(x))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def test_cnn_linear_subgraphs_only():
    sgs = partition(SmallCNN(), torch.randn(2, 1, 8, 8))
    assert layers_of(sgs) == [("fc1",), ("fc2",)]


def tiny_llama(layers=2):
    return shared_tiny_llama(layers, tie_word_embeddings=True)


def attention_mlp_head(blocks):
    """(name, layers, ties) of a decoder's sub-graphs: per block attention (q/k/v tied) and MLP (gate/up tied),
    then lm_head."""
    expect = []
    for i in range(blocks):
        a, p = f"model.layers.{i}.self_attn", f"model.layers.{i}.mlp"
        expect.append((a, (f"{a}.q_proj", f"{a}.k_proj", f"{a}.v_proj", f"{a}.o_proj"),
                       ((f"{a}.q_proj", f"{a}.k_proj", f"{a}.v_proj"),)))
        expect.append((p, (f"{p}.gate_proj", f"{p}.up_proj", f"{p}.down_proj"),
                       ((f"{p}.gate_proj", f"{p}.up_proj"),)))
    return expect + [("lm_head", ("lm_head",), ())]


def test_tiny_llama_attention_mlp_head():
    m = tiny_llama(2)
    sgs = partition(m, torch.randint(0, 64, (1, 8)))
    assert [(sg.name, sg.layers, sg.ties) for sg in sgs] == attention_mlp_head(2)
    assert sgs[1].start == "model.layers.0.post_attention_layernorm"
    assert sgs[2].start == "model.layers.1.input_layernorm"
    assert sgs[-1].start == "model.norm"
    names = dict(m.named_modules())
    assert all(isinstance(names[l], nn.Linear) for sg in sgs for l in sg.layers)


def test_tiny_gemma3_sliding_and_full_attention():
    """Gemma3 blocks (q/k norms, a norm after attention and around the MLP, sliding and full attention layers):
    one attention and one MLP sub-graph per block, cut at the residual adds, the post-attention norm inside the
    attention sub-graph and the pre-feed-forward norm starting the MLP's."""
    m = tiny_gemma3(("sliding_attention", "full_attention", "sliding_attention"))
    sgs = partition(m, torch.randint(0, 64, (1, 8)))
    assert [(sg.name, sg.layers, sg.ties) for sg in sgs] == attention_mlp_head(3)
    assert all(sg.method == "export" for sg in sgs)
    assert [sg.start for sg in sgs[1:]] == [
        "model.layers.0.pre_feedforward_layernorm", "model.layers.1.input_layernorm",
        "model.layers.1.pre_feedforward_layernorm", "model.layers.2.input_layernorm",
        "model.layers.2.pre_feedforward_layernorm", "model.norm"]


def test_tiny_llama_fallback_per_block():
    m = tiny_llama(2)
    sgs = partition(m, torch.randint(0, 64, (1, 8)), method="fallback")
    assert [sg.name for sg in sgs] == ["model.layers.0", "model.layers.1", "lm_head"]
    assert sgs[0].ties == (("model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj",
                            "model.layers.0.self_attn.v_proj"),
                           ("model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"))
    assert all(sg.method == "fallback" for sg in sgs)


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x):
        h = self.a(x)
        if h.sum().item() > 0:      # data-dependent control flow: torch.export refuses it
            h = -h
        return self.b(h)


def test_uncapturable_model_falls_back_with_a_warning():
    with pytest.warns(RuntimeWarning, match="could not capture"):
        sgs = partition(DataDependent(), torch.randn(2, 4))
    assert layers_of(sgs) == [("a",), ("b",)]
    with pytest.raises(RuntimeError, match="could not capture"):
        partition(DataDependent(), torch.randn(2, 4), method="export")


def test_bad_example_input_is_a_clear_error():
    m = nn.Sequential(nn.Linear(8, 4))
    with pytest.raises(ValueError, match="does not run through the model"):
        partition(m, torch.randn(3, 5))
    with pytest.raises(ValueError, match="example_input"):
        partition(m, "text")


def test_model_without_linear_layers():
    with pytest.raises(ValueError, match="no nn.Linear"):
        partition(nn.Sequential(nn.ReLU()), torch.randn(2))


def test_subgraph_groups_order():
    sg = Subgraph("s", ("q", "k", "v", "o"), (("q", "k", "v"),))
    assert sg.groups == (("q", "k", "v"), ("o",))


class SharedWeights(nn.Module):
    """Two Linears holding one Parameter (as a head tied to an input projection does), far apart in the graph,
    and a third pair that shares a weight inside one segment."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.mid = nn.Linear(8, 8)
        self.head = nn.Linear(8, 8)
        self.head.weight = self.proj.weight  # one tensor, two modules
        self.p = nn.Linear(8, 8)
        self.q = nn.Linear(8, 8, bias=False)
        self.q.weight = self.p.weight

    def forward(self, x):
        h = torch.relu(self.proj(x))
        h = torch.relu(self.mid(h))
        h = torch.relu(self.head(h))
        return self.p(h) + self.q(h * 2)


@pytest.mark.parametrize("method", ["export", "fallback"])
def test_linears_sharing_one_weight_are_tied_in_one_subgraph(method):
    """A weight stored once can take only one format: its Linears take one choice, in one sub-graph (the span
    between them, as for a Linear called twice)."""
    sgs = partition(SharedWeights(), torch.randn(2, 8), method=method)
    assert layers_of(sgs) == [("proj", "mid", "head"), ("p", "q")]
    assert sgs[0].groups == (("proj", "head"), ("mid",))
    assert sgs[1].groups == (("p", "q"),)
