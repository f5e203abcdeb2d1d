"""A tiny causal LM saved as a Hugging Face folder (config, weights and tokenizer), built offline, for the command
line tests: what ``mpq.data.load_causal_lm`` (and so every MODEL argument) reads."""
from pathlib import Path

import pytest
import torch

DEMO_TEXT = Path(__file__).resolve().parents[1] / "python" / "mpq" / "demo_data" / "calibration.txt"


def save_tiny_causal_lm(folder: Path, vocab: int = 300) -> Path:
    """A seeded random LlamaForCausalLM (2 layers, hidden 32, GQA 4/2) with a byte-level BPE tokenizer of ``vocab``
    tokens trained on mpq's demo text, saved into ``folder``; skips without transformers or tokenizers."""
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tk = tokenizers.Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator([DEMO_TEXT.read_text(encoding="utf-8")[:20000]], trainer)
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>")
    cfg = transformers.LlamaConfig(vocab_size=tk.get_vocab_size(), hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=128, bos_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
