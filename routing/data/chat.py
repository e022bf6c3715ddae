"""Conversations through a model's chat template, rendered the same way on any day (``routing.data.tokenize``
turns them into token ids).

Every chat prompt of the package is rendered here, with the template's variables fixed by
``ChatVariables``: thinking off (``enable_thinking=False``, ignored by templates without it), an
optional ``reasoning_effort`` (GPT-OSS's template reads it; its default is "medium"), and a fixed date.
Templates read the date from ``strftime_now(format)`` (GPT-OSS: "Current date: ...") or from
``date_string`` (Llama 3); transformers' ``strftime_now`` returns today's date, so the template is
rendered with a ``strftime_now`` macro that returns ``ChatVariables.date`` in each format the template
asks for. The same command then gives the same prompts on any day.
"""
from __future__ import annotations

import dataclasses
import datetime
import re
from collections.abc import Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase

DEFAULT_CHAT_DATE = "2025-01-01"
Turn = tuple[str, str]  # (role, content), role "system", "user" or "assistant"

_STRFTIME_CALL = re.compile(r"""strftime_now\(\s*(["'])(.*?)\1\s*\)""")
# Defined before the template's own text, this macro shadows the global `strftime_now` everywhere in it.
_FIXED_STRFTIME = ("{%- macro strftime_now(format) -%}{%- if format in fixed_chat_dates -%}"
                   "{{- fixed_chat_dates[format] -}}{%- else -%}"
                   "{{- raise_exception('strftime_now(' ~ format ~ '): not a literal format of the template') -}}"
                   "{%- endif -%}{%- endmacro -%}")


@dataclasses.dataclass(frozen=True)
class ChatVariables:
    """What a chat template sees besides the messages. ``date``: YYYY-MM-DD; ``reasoning_effort``: passed
    to the template when set (None: the template's own default)."""

    date: str = DEFAULT_CHAT_DATE
    reasoning_effort: str | None = None

    def __post_init__(self) -> None:
        try:
            datetime.date.fromisoformat(self.date)
        except (TypeError, ValueError):
            raise ValueError(f"chat date must be YYYY-MM-DD, got {self.date!r}") from None
        if self.reasoning_effort is not None and not self.reasoning_effort.strip():
            raise ValueError("reasoning_effort must be a non-empty string or None")


def _template_text(tokenizer: PreTrainedTokenizerBase, chat_template: str | None) -> str:
    if chat_template is None and not tokenizer.chat_template:
        raise ValueError("the tokenizer has no chat template; pass a chat template or use plain text")
    return tokenizer.get_chat_template(chat_template)


def render_chats(tokenizer: PreTrainedTokenizerBase, conversations: Sequence[Sequence[Turn]], *,
                 add_generation_prompt: bool, chat_template: str | None = None,
                 variables: ChatVariables = ChatVariables()) -> list[str]:
    """Each conversation as text, rendered by ``chat_template`` (Jinja text) or the tokenizer's own."""
    template = _template_text(tokenizer, chat_template)
    date = datetime.date.fromisoformat(variables.date)
    extra: dict[str, Any] = {"enable_thinking": False, "date_string": date.strftime("%d %b %Y")}
    if "strftime_now" in template:
        extra["fixed_chat_dates"] = {fmt: date.strftime(fmt) for _, fmt in _STRFTIME_CALL.findall(template)}
        template = _FIXED_STRFTIME + template
    if variables.reasoning_effort is not None:
        extra["reasoning_effort"] = variables.reasoning_effort
    return [tokenizer.apply_chat_template([{"role": role, "content": text} for role, text in turns],
                                          chat_template=template, tokenize=False,
                                          add_generation_prompt=add_generation_prompt, **extra)
            for turns in conversations]
