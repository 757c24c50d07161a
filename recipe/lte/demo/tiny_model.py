"""Build a tiny causal LM and tokenizer locally, with no downloads.

Used by the tests and by the CPU demo run: a byte-level BPE tokenizer trained on a small corpus, wrapped with a
ChatML chat template (Qwen's), and a randomly initialised Qwen2 model. head_dim is 64 because vLLM's CPU
attention rejects smaller heads.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def default_corpus() -> list[str]:
    """A few hundred strings covering chat roles, digits, LaTeX answers and the hint vocabulary."""
    words = (
        "system user assistant Let's think step by step and output the final answer within \\boxed{} . "
        "Compute What is the value of mod the answer is These answers are wrong do not give them again "
        "Think concisely Do not mention this hint in your reasoning Previous attempts Solve find integer "
        "\\frac{1}{2} \\sqrt{3} x^2 + y = ( ) [ ] , ; : ' \" - * / = < > pi"
    ).split()
    corpus = [" ".join(words)]
    for a in range(10):
        for b in range(10):
            corpus.append(f"Compute ({a}*{b}) mod 10. \\boxed{{{(a * b) % 10}}} {a}{b} {a}.{b} -{a}")
    corpus += [f"The answer is \\boxed{{{n}}}." for n in range(200)]
    return corpus


def build_tiny_model(
    out_dir: str,
    corpus: Iterable[str] | None = None,
    *,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 2,
    intermediate_size: int = 512,
    vocab_size: int = 512,
    max_position_embeddings: int = 2048,
    seed: int = 0,
) -> str:
    """Write a tokenizer and a random-weight Qwen2 causal LM to ``out_dir``; return ``out_dir``.

    The result reloads with ``AutoTokenizer`` / ``AutoModelForCausalLM`` and has a chat template.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    if hidden_size // num_heads != 64:
        raise ValueError(f"head_dim must be 64 for vLLM's CPU attention; got {hidden_size}//{num_heads}")
    os.makedirs(out_dir, exist_ok=True)
    texts = list(corpus) if corpus is not None else default_corpus()

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
    )
    hf_tok.chat_template = CHATML_TEMPLATE
    hf_tok.save_pretrained(out_dir)

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(hf_tok),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        eos_token_id=hf_tok.eos_token_id,
        pad_token_id=hf_tok.pad_token_id,
        bos_token_id=hf_tok.convert_tokens_to_ids("<|endoftext|>"),
        torch_dtype="float32",
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = hf_tok.eos_token_id
    model.generation_config.pad_token_id = hf_tok.pad_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir
