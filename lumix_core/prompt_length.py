"""The reference's limit on prompt length, and the warning for a prompt beyond it.

The reference's T5 embedder (src/flux/modules/conditioner.py, `load_t5(max_length=512)`) tokenises with
truncation at 512 tokens: the first 511 text tokens and the end token. ComfyUI's FLUX tokenizer never
truncates T5 input (its maximum is effectively unlimited): a 900-token prompt is encoded whole, and
because T5 attends both ways even the first 511 tokens' outputs then differ from the reference's.
ComfyUI offers no per-prompt truncation through its public nodes, so LumiX warns instead: FLUX
conditioning holds one row per T5 token, so more than 512 rows means a longer prompt than the
reference ever encodes.
"""
from __future__ import annotations

REFERENCE_T5_TOKENS = 512


def t5_rows(conditioning) -> int:
    """The most T5 token rows among a CONDITIONING's entries ([[tensor [1, tokens, C], dict], ...])."""
    rows = [entry[0].shape[1] for entry in conditioning or [] if hasattr(entry[0], "shape") and entry[0].ndim == 3]
    return max(rows, default=0)


def long_prompt_warning(**conditionings) -> str | None:
    """A warning naming each prompt (by input name) longer than the reference's 512 T5 tokens, else None."""
    long = {name: t5_rows(c) for name, c in conditionings.items() if t5_rows(c) > REFERENCE_T5_TOKENS}
    if not long:
        return None
    which = ", ".join(f"{name} {rows}" for name, rows in long.items())
    return (f"LumiX: prompt over 512 T5 tokens ({which}); the reference cuts it at 512, so results differ. "
            "Shorten it.")
