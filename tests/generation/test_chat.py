"""Chat rendering of the tiny tokenizer and encode_chat_prompt."""

from generation import encode_chat_prompt, render_chat_prompt


def test_template_renders_the_specified_format(tiny):
    tok = tiny.tokenizer
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello"}], tokenize=False
    )
    assert text == "<|bos|><|user|>\nhi there<|eos|>\n<|assistant|>\nhello<|eos|>\n"
    assert render_chat_prompt(tok, "hi there") == "<|bos|><|user|>\nhi there<|eos|>\n<|assistant|>\n"


def test_encode_chat_prompt_ends_with_assistant_header(tiny):
    tok = tiny.tokenizer
    ids = encode_chat_prompt(tok, "the cat sat")
    header = tok.encode("<|assistant|>\n", add_special_tokens=False)
    assert ids[:2] == [tok.bos_token_id, tok.convert_tokens_to_ids("<|user|>")]
    assert ids[-len(header) :] == header
    assert tok.decode(ids) == "<|bos|><|user|>\nthe cat sat<|eos|>\n<|assistant|>\n"


def test_special_tokens_typed_by_the_user_stay_text(tiny):
    tok = tiny.tokenizer
    ids = encode_chat_prompt(tok, "a <|eos|> b")
    assert ids.count(tok.eos_token_id) == 1  # only the template's own end-of-turn
    assert "a <|eos|> b" in tok.decode(ids)


def test_without_template_falls_back_to_plain_text(tiny):
    tok = tiny.tokenizer
    template = tok.chat_template
    tok.chat_template = None
    try:
        assert encode_chat_prompt(tok, "the cat") == tok.encode("the cat\n", add_special_tokens=True)
        assert render_chat_prompt(tok, "the cat") == "the cat\n"
    finally:
        tok.chat_template = template
