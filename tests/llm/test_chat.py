"""Chat templates: the model's own Jinja template, sandboxed; missing or broken ones warn loudly."""
import pytest

from firstepoch import FirstEpochError
from firstepoch.llm.chat import ChatTemplate


def test_the_bundled_template_renders_chatml(smollm):
    text = smollm.render_chat([{"role": "user", "content": "Hi"}])
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>user\nHi<|im_end|>\n"
                                                                      "<|im_start|>assistant\n")


def test_a_missing_template_warns_and_uses_a_plain_layout(smollm):
    with pytest.warns(UserWarning, match="no chat template.*--chat-template"):
        template = ChatTemplate(None, smollm.tokenizer)
    assert template.fallback and template.render([{"role": "user", "content": "Hi"}]) == "user: Hi\nassistant: "


def test_a_broken_template_warns(smollm):
    with pytest.warns(UserWarning, match="does not parse"):
        assert ChatTemplate("{% for m in messages %}", smollm.tokenizer).fallback


def test_templates_run_sandboxed_and_may_refuse_messages(smollm):
    sneaky = ChatTemplate("{{ messages.__class__.__mro__[1].__subclasses__() }}", smollm.tokenizer)
    with pytest.raises(FirstEpochError, match="chat template failed"):
        sneaky.render([{"role": "user", "content": "x"}])
    strict = ChatTemplate("{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}ok",
                          smollm.tokenizer)
    with pytest.raises(FirstEpochError, match="user first"):
        strict.render([{"role": "assistant", "content": "x"}])
    with pytest.raises(FirstEpochError, match="'role' and a 'content'"):
        strict.render([{"role": "user"}])


def test_a_template_with_an_unknown_filter_warns(smollm):
    with pytest.warns(UserWarning, match="does not parse .*No filter named 'nope'"):
        assert ChatTemplate("{{ messages|nope }}", smollm.tokenizer).fallback
