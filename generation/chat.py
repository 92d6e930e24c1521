"""Rendering a user turn into prompt token ids with the tokenizer's chat format."""

import inspect
from typing import Any


def _supports_kwarg(function: Any, name: str) -> bool:
    return name in inspect.signature(function).parameters


def render_chat_prompt(tokenizer: Any, user_text: str) -> str:
    """The user turn as text, ending with the assistant header (or `user_text + "\\n"` without a template)."""
    if not getattr(tokenizer, "chat_template", None):
        return user_text + "\n"
    messages = [{"role": "user", "content": user_text}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def encode_chat_prompt(tokenizer: Any, user_text: str) -> list[int]:
    """Token ids of one user turn followed by the assistant header, ready for `generate`.

    With a chat template this is `apply_chat_template(add_generation_prompt=True)`; special tokens
    typed inside `user_text` (e.g. a literal "<|eos|>") are encoded as plain text where the installed
    transformers supports it, so user content cannot forge turn boundaries. Without a chat template
    the prompt is the plain text plus a newline, with the tokenizer's usual special tokens (e.g. BOS).

    Args:
        tokenizer: A Hugging Face tokenizer.
        user_text: The user's message.

    Returns:
        Prompt token ids.
    """
    if not getattr(tokenizer, "chat_template", None):
        return list(tokenizer.encode(user_text + "\n", add_special_tokens=True))
    messages = [{"role": "user", "content": user_text}]
    options: dict[str, Any] = {"add_generation_prompt": True, "tokenize": True, "return_dict": True}
    if _supports_kwarg(tokenizer.apply_chat_template, "sanitize_control_tokens"):
        options["sanitize_control_tokens"] = True
    encoded = tokenizer.apply_chat_template(messages, **options)
    return list(encoded["input_ids"])
