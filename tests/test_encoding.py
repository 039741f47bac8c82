"""Chat templates, BOS handling, text pairs and the truncation policy, on real tokenizers."""

from __future__ import annotations

import json
import shutil

import pytest

from engine import InputTooLongError, Item
from engine.encoding import Encoder, TokenizerFiles
from engine.templates import ChatTemplate, TemplateRenderError
from engine.types import Message


def test_render_matches_transformers_apply_chat_template(hf_models):
    from transformers import AutoTokenizer

    folder = hf_models["qwen3"]
    enc = Encoder(TokenizerFiles.from_folder(folder))
    conv = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi, ça va?"},
            {"role": "assistant", "content": "Oui."}, {"role": "user", "content": "Et toi ?"}]
    item = Item.of(conv, "Très bien, merci.")
    want = AutoTokenizer.from_pretrained(folder).apply_chat_template(
        conv + [{"role": "assistant", "content": "Très bien, merci."}], tokenize=False)
    assert enc.render(item) == want
    ids = enc.encode(item).ids
    assert list(ids) == AutoTokenizer.from_pretrained(folder)(want)["input_ids"]


def test_sandbox_refuses_python_internals():
    t = ChatTemplate("{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(TemplateRenderError):
        t.render((Message("user", "x"),), add_generation_prompt=False)
    t = ChatTemplate("{% if messages|length > 1 %}{{ raise_exception('one turn only') }}{% endif %}ok")
    with pytest.raises(TemplateRenderError, match="one turn only"):
        t.render((Message("user", "a"), Message("assistant", "b")), add_generation_prompt=False)


def test_bos_is_not_doubled_when_the_tokenizer_adds_it(tmp_path, hf_models):
    """A Llama-3 style setup: the template writes BOS and the tokenizer adds BOS too."""
    from tokenizers import Tokenizer
    from tokenizers.processors import TemplateProcessing

    folder = tmp_path / "bos"
    shutil.copytree(hf_models["llama"], folder)
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    bos = "<|endoftext|>"
    bos_id = tok.token_to_id(bos)
    tok.post_processor = TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, bos_id)])
    tok.save(str(folder / "tokenizer.json"))
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg["bos_token"] = bos
    cfg["chat_template"] = "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    enc = Encoder(TokenizerFiles.from_folder(folder))
    ids = enc.encode(Item.of("hello", "world")).ids
    assert ids[0] == bos_id and ids.count(bos_id) == 1


def _long_conversation(n: int = 60) -> list[dict[str, str]]:
    conv = []
    for i in range(n):
        conv.append({"role": "user", "content": f"Question number {i}: what is {i} plus {i}?"})
        conv.append({"role": "assistant", "content": f"It is {2 * i}."})
    conv.append({"role": "user", "content": "And the last one?"})
    return conv


def test_long_chat_keeps_response_and_end_and_counts_the_cut(hf_models):
    full = Encoder(TokenizerFiles.from_folder(hf_models["qwen3"]))  # the model's 512 tokens
    short = Encoder(TokenizerFiles.from_folder(hf_models["qwen3"]), max_length=128)
    item = Item.of(_long_conversation(10), "The final answer is forty-two.")
    a, b = full.encode(item), short.encode(item)
    assert 128 < len(a.ids) < 512 and not a.cut_tokens and len(b.ids) == 128
    assert b.cut_tokens == len(a.ids) - 128
    # the response and the end of the conversation survive intact
    assert b.ids[-(len(a.ids) - a.prompt_len):] == a.ids[a.prompt_len:]
    assert b.ids[-60:] == a.ids[-60:]


def test_response_longer_than_context_is_refused(hf_models):
    enc = Encoder(TokenizerFiles.from_folder(hf_models["llama"]), max_length=64)
    with pytest.raises(InputTooLongError, match="response alone"):
        enc.encode(Item.of("Hi", "word " * 200))
    pair = Encoder(TokenizerFiles.from_folder(hf_models["minilm"]), max_length=32)
    with pytest.raises(InputTooLongError):
        pair.encode(Item.of("Hi", "word " * 100))


def test_cross_encoder_text_pair_cut_from_the_start(hf_models):
    enc = Encoder(TokenizerFiles.from_folder(hf_models["minilm"]), max_length=48)
    assert enc.kind == "pair"
    tok = enc.tokenizer
    e = enc.encode(Item.of(_long_conversation(10), "forty two"))
    assert len(e.ids) == 48 and e.cut_tokens > 0
    text = tok.decode(list(e.ids))
    assert text.endswith("and the last one? forty two")
    assert e.type_ids is not None and e.type_ids[-1] == 1 and e.type_ids[0] == 0
