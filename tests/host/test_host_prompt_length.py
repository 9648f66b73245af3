"""Prompts longer than the reference's 512 T5 tokens: the sampler warns in the node and the log (issue 21).
The reference truncates T5 input at 512 tokens; ComfyUI encodes a longer prompt whole."""
import logging
import sys
import types

import pytest
import torch

from comfy_host import TinyVAE, conditioning, load_extension, tiny_lumix_model, with_hidden  # first: skips without ComfyUI

NODES = load_extension()
Sampler = NODES["LumiXSampler"]
SIZE = 32


@pytest.fixture(scope="module")
def lumix_model(tmp_path_factory):
    return tiny_lumix_model(tmp_path_factory.mktemp("lumix_prompt_length"), "prompt_length_lumix.safetensors")


class FakeServer:
    def __init__(self):
        self.texts = []

    def send_progress_text(self, text, node_id, sid=None):
        self.texts.append((node_id, text))


def run(model, monkeypatch, caplog, positive_tokens, negative_tokens=4, cfg=3.0, **kwargs):
    fake = FakeServer()
    monkeypatch.setitem(sys.modules, "server", types.SimpleNamespace(PromptServer=types.SimpleNamespace(instance=fake)))
    node = with_hidden(Sampler, {"UNIQUE_ID": "9"})
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        node.execute(model, conditioning(1, tokens=positive_tokens), conditioning(2, tokens=negative_tokens), TinyVAE(),
                     0, 1, cfg, "euler", "simple", SIZE, SIZE, 1, True, **kwargs)
    return [text for _, text in fake.texts if "512 T5 tokens" in text], caplog.text


def test_a_prompt_over_512_tokens_is_warned_in_the_node(lumix_model, monkeypatch, caplog):
    texts, log = run(lumix_model, monkeypatch, caplog, 600)
    assert len(texts) == 1 and "positive 600" in texts[0] and "reference cuts it at 512" in texts[0]
    assert len(texts[0]) <= 120  # the two lines the node's text box shows
    assert "positive 600" in log


@pytest.mark.parametrize("tokens", [256, 512])
def test_prompts_within_512_tokens_are_not_warned(lumix_model, monkeypatch, caplog, tokens):
    texts, log = run(lumix_model, monkeypatch, caplog, tokens)
    assert texts == [] and "512 T5 tokens" not in log


def test_a_long_negative_counts_only_where_cfg_uses_it(lumix_model, monkeypatch, caplog):
    texts, _ = run(lumix_model, monkeypatch, caplog, 512, negative_tokens=700, cfg=3.0)
    assert len(texts) == 1 and "negative 700" in texts[0] and "positive" not in texts[0]
    texts, _ = run(lumix_model, monkeypatch, caplog, 512, negative_tokens=700, cfg=1.0)
    assert texts == []
    photo = torch.rand(1, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(1))
    texts, _ = run(lumix_model, monkeypatch, caplog, 512, negative_tokens=700, cfg=3.0, color=photo,
                   held_maps_size="width x height")  # decomposition as the reference: no negative pass
    assert texts == []
