"""Build a tiny causal LM with a real (trained) tokenizer and a ChatML template, and a tiny sentence encoder.

Used by unit tests so they exercise the real transformers/peft code paths in
seconds, with no download. Weights are random but seeded, so outputs are
deterministic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "How can I reset my password? Go to settings and click reset.",
    "Paris is the capital of France. Berlin is the capital of Germany.",
    "I cannot help with that request because it could cause harm.",
    "Sure, here is a step by step answer to your question.",
    "Question: What is two plus two? Answer: four.",
    "My order arrived damaged, please send a replacement or a refund.",
] * 20


def build_tiny_model(out: str | Path, *, vocab_size: int = 400, hidden: int = 32, layers: int = 2,
                     seed: int = 0, arch: str = "llama") -> Path:
    """Write a tiny model (safetensors + tokenizer.json + chat template) to `out` and return it."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(_CORPUS, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=None, eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>", unk_token=None)
    tok.chat_template = CHATML
    tok.save_pretrained(out)

    torch.manual_seed(seed)
    cfg = AutoConfig.for_model(
        arch, vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=512, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        bos_token_id=None, tie_word_embeddings=True,
    )
    model = AutoModelForCausalLM.from_config(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    return out


def build_tiny_encoder(out: str | Path, words: list[str], model_cls: str = "BertModel", **config: Any) -> Path:
    """A one-layer random BERT of hidden size 16 over a word-level vocabulary of `words`, saved in `out`.

    Its weights come from a fixed seed, so a test that trains it does not depend on what ran before it."""
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]").save_pretrained(out)
    cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, **config)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        getattr(transformers, model_cls)(cfg).save_pretrained(out)
    return Path(out)
