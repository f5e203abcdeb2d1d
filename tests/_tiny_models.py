"""Small models built from configs (nothing downloaded), shared by the tests."""
import pytest
import torch


def tiny_llama(layers=1, tie_word_embeddings=False):
    """A random LlamaForCausalLM (vocab 64, hidden 32, GQA 4/2) in eval mode, seeded; skips without transformers."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                                   num_attention_heads=4, num_key_value_heads=2,
                                   tie_word_embeddings=tie_word_embeddings)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()
