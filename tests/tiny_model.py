"""Tiny random Llama models with a locally trained BPE tokenizer: real weights and tokenizer files, in seconds."""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "Q: Tom has 3 apples and buys 4 more. How many apples does he have? A: Let's think step by step.",
    "Tom had 3 apples. He bought 4 more. 3 + 4 = 7. Therefore, the answer (arabic numerals) is 7.",
    "Answer Choices: (A) yes (B) no. The answer is yes. The coin is still heads up.",
    "Take the last letters of each word and concatenate them. The answer is ab.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 + - * / = . , ? ! ( ) ### --> \n",
]


def build_tiny_model(path: str | Path, *, vocab_size: int = 512, hidden: int = 64, layers: int = 2,
                     seed: int = 0, reasoning: bool = False) -> Path:
    """Write a random LlamaForCausalLM and its tokenizer to `path` (skipped when already there).

    reasoning: a reasoning model's tokenizer, DeepSeek-R1 style: `<think>`/`</think>` as added tokens, and Llama-3's
    BOS habit (the tokenizer adds BOS and the chat template writes it too).
    """
    path = Path(path)
    if (path / "config.json").exists() and (path / "tokenizer.json").exists():
        return path
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<pad>", unk_token=None)
    fast.chat_template = CHAT_TEMPLATE
    if reasoning:
        from tokenizers import AddedToken, processors

        tok.add_tokens([AddedToken("<think>", special=False), AddedToken("</think>", special=False)])
        bos = "<|endoftext|>"
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=bos, pad_token="<pad>",
                                       unk_token=None)
        fast.chat_template = "{{ bos_token }}" + CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2, head_dim=hidden // 2,
                         max_position_embeddings=2048, bos_token_id=fast.bos_token_id,
                         eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path
