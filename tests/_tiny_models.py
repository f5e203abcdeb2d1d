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


def tiny_gemma3(layer_types=("sliding_attention", "full_attention")):
    """A random Gemma3ForCausalLM (vocab 64, hidden 32, GQA 4/2, q/k norms, four norms per block, tied embeddings)
    in eval mode, seeded; skips without a transformers that has Gemma3."""
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "Gemma3ForCausalLM"):
        pytest.skip(f"transformers {transformers.__version__} has no Gemma3")
    cfg = transformers.Gemma3TextConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=len(layer_types), layer_types=list(layer_types),
                                        num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=4,
                                        max_position_embeddings=64, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    torch.manual_seed(0)
    return transformers.Gemma3ForCausalLM(cfg).eval()


def padded_lm_batch(n=3, s=12, pad=True, seed=1):
    """A seeded batch of n sequences of s token ids from the tiny models' vocabulary (3..63; 2 is the pad id): with
    ``pad`` sample 0 left-padded over 4 tokens and sample 1 right-padded from token 9."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 64, (n, s), generator=g)
    mask = torch.ones(n, s, dtype=torch.long)
    if pad:
        mask[0, :4] = 0  # left padding
        mask[1, 9:] = 0  # right padding
        ids[mask == 0] = 2
    return {"input_ids": ids, "attention_mask": mask}
