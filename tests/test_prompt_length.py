"""The long-prompt warning's counting (issue 21): FLUX conditioning holds one row per T5 token."""
import torch

from lumix_core.prompt_length import REFERENCE_T5_TOKENS, long_prompt_warning, t5_rows


def cond(*rows):
    return [[torch.zeros(1, n, 8), {"pooled_output": torch.zeros(1, 4)}] for n in rows]


def test_rows_are_the_longest_entry():
    assert t5_rows(cond(256, 900, 512)) == 900
    assert t5_rows(None) == 0 and t5_rows([]) == 0


def test_warning_only_beyond_the_references_limit_and_names_each_prompt():
    assert REFERENCE_T5_TOKENS == 512
    assert long_prompt_warning(positive=cond(512), negative=cond(256)) is None
    text = long_prompt_warning(positive=cond(513), negative=cond(900))
    assert "positive 513" in text and "negative 900" in text and "512" in text
