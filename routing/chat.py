"""Multi-turn conversations to token ids through a chat template."""
from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

Turn = tuple[str, str]  # (role, content), role "user" or "assistant"


def encode_conversations(tokenizer: PreTrainedTokenizerBase, conversations: Sequence[Sequence[Turn]], *,
                         add_generation_prompt: bool, chat_template: str | None = None) -> list[list[int]]:
    """Token ids of each conversation rendered by the chat template (``chat_template`` or the tokenizer's).

    Thinking is off (``enable_thinking=False``, ignored by templates without it); the rendered string is
    tokenized without adding special tokens, since the template writes its own.
    """
    if chat_template is None and not tokenizer.chat_template:
        raise ValueError("the tokenizer has no chat template; pass chat_template=... or use plain text")
    rendered = [
        tokenizer.apply_chat_template([{"role": role, "content": text} for role, text in turns],
                                      chat_template=chat_template, tokenize=False,
                                      add_generation_prompt=add_generation_prompt, enable_thinking=False)
        for turns in conversations
    ]
    return [list(ids) for ids in tokenizer(rendered, add_special_tokens=False)["input_ids"]]
