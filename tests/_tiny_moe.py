"""Small mixture-of-experts models built from configs (nothing downloaded), for the expert tests."""
import pytest
import torch


def _seeded(build):
    torch.manual_seed(0)
    model = build().eval()
    with torch.no_grad():  # transformers 5 leaves stacked expert weights as torch.empty: give them values
        for n, p in model.named_parameters():
            if p.dim() == 3:
                p.normal_(0, 0.2)
    return model


def tiny_qwen3_moe(layers=1, experts=4, top_k=2):
    """A random Qwen3MoeForCausalLM (vocab 64, hidden 32, E experts of width 16, top-k) in eval mode, seeded."""
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "Qwen3MoeForCausalLM"):
        pytest.skip(f"transformers {transformers.__version__} has no Qwen3-MoE")
    cfg = transformers.Qwen3MoeConfig(vocab_size=64, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                      head_dim=8, num_experts=experts, num_experts_per_tok=top_k,
                                      decoder_sparse_step=1, norm_topk_prob=True)
    return _seeded(lambda: transformers.Qwen3MoeForCausalLM(cfg))


def tiny_mixtral(layers=1, experts=4, top_k=2):
    """A random MixtralForCausalLM (vocab 64, hidden 32, E experts of width 16, top-k) in eval mode, seeded."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.MixtralConfig(vocab_size=64, hidden_size=32, intermediate_size=16, num_hidden_layers=layers,
                                     num_attention_heads=4, num_key_value_heads=2, num_local_experts=experts,
                                     num_experts_per_tok=top_k)
    return _seeded(lambda: transformers.MixtralForCausalLM(cfg))


def tiny_jetmoe(layers=1):
    """A random JetMoeForCausalLM: its experts (``JetMoeParallelExperts``) are a layout mpq does not know."""
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "JetMoeForCausalLM"):
        pytest.skip(f"transformers {transformers.__version__} has no JetMoE")
    cfg = transformers.JetMoeConfig(vocab_size=64, hidden_size=32, num_hidden_layers=layers, num_key_value_heads=2,
                                    kv_channels=8, intermediate_size=16, num_local_experts=4, num_experts_per_tok=2)
    return _seeded(lambda: transformers.JetMoeForCausalLM(cfg))


def tiny_switch(experts=4):
    """A random SwitchTransformersForConditionalGeneration (vocab 64, d_model 32): its experts are a ModuleDict of
    per-expert Linear pairs, called on the rows of the tokens routed to them (top-1 with capacity per sequence)."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.SwitchTransformersConfig(vocab_size=64, d_model=32, d_kv=8, d_ff=32, num_layers=2,
                                                num_decoder_layers=1, num_heads=4, num_experts=experts,
                                                expert_capacity=64, num_sparse_encoder_layers=1,
                                                num_sparse_decoder_layers=1, decoder_start_token_id=0, pad_token_id=0)
    torch.manual_seed(0)
    return transformers.SwitchTransformersForConditionalGeneration(cfg).eval()


def tiny_gpt_oss(layers=1):
    """A random GptOssForCausalLM: transposed expert weights [E, in, out] with biases and an interleaved, clamped
    gate (its own ``_apply_gate``)."""
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "GptOssForCausalLM"):
        pytest.skip(f"transformers {transformers.__version__} has no GPT-OSS")
    cfg = transformers.GptOssConfig(vocab_size=64, hidden_size=32, intermediate_size=16, num_hidden_layers=layers,
                                    num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_local_experts=4,
                                    num_experts_per_tok=2)
    return _seeded(lambda: transformers.GptOssForCausalLM(cfg))
