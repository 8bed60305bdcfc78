"""Turning conversations into token IDs with the protocol's chat template, and labels for response-only loss.

Shared by training (labels), selection signals (IFD-style losses need the prompt/response split) and generation
(the prompt with the generation header).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Tokenized:
    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def trained_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE_INDEX)


def render(tok, messages: Sequence[dict[str, str]], add_generation_prompt: bool = False) -> str:
    return tok.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def encode(tok, text: str) -> list[int]:
    # The chat template already writes any BOS the model wants.
    return tok(text, add_special_tokens=False)["input_ids"]


def tokenize_conversation(tok, messages: Sequence[dict[str, str]], max_len: int,
                          responses_only: bool = True) -> Tokenized:
    """Token IDs of the whole conversation and labels that train only on assistant turns (if ``responses_only``).

    Each assistant span is located by rendering the conversation up to that turn with and without the reply, so
    the span is exactly what the template emits for that reply (including its end-of-turn token).
    """
    ids = encode(tok, render(tok, messages))
    if not responses_only:
        labels = list(ids)
    else:
        labels = [IGNORE_INDEX] * len(ids)
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            start = len(encode(tok, render(tok, messages[:i], add_generation_prompt=True)))
            end = len(encode(tok, render(tok, messages[: i + 1])))
            labels[start:end] = ids[start:end]
    return Tokenized(ids[:max_len], labels[:max_len])


def prompt_and_response_ids(tok, prompt: str, response: str) -> tuple[list[int], list[int]]:
    """Single-turn split used by loss-based signals: (prompt tokens incl. generation header, response tokens)."""
    msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    full = encode(tok, render(tok, msgs))
    head = encode(tok, render(tok, msgs[:1], add_generation_prompt=True))
    return full[: len(head)], full[len(head):]
