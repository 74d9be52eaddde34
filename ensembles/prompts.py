"""Prompt and phrase encoding with the CLIP tokenizer and the ``text_encoder`` graph."""

from __future__ import annotations

import threading

import numpy as np

from xsyn.ensembles.runner import Runner

MAX_LENGTH = 77
#: A tokenizer call sets padding and truncation on the shared (Rust) tokenizer before encoding;
#: concurrent requests (threads of an in-process job, or of one model instance) must not
#: interleave those settings, or a prompt is encoded with another call's padding.
_TOKENIZER_LOCK = threading.Lock()


def tokenize(tokenizer, texts: list[str]) -> np.ndarray:
    """int32 ``[N, 77]`` ids: BOS, tokens, EOS, EOS padding; truncated to 77."""
    with _TOKENIZER_LOCK:
        enc = tokenizer(texts, padding="max_length", max_length=MAX_LENGTH, truncation=True)
    return np.asarray(enc["input_ids"], dtype=np.int32)


def phrase_token_positions(tokenizer, phrases: list[str]) -> list[list[int]]:
    """Positions of each phrase's tokens in the prompt ``" ".join(phrases)``.

    CLIP's BPE works word by word, so the joined prompt's tokens are the phrases' tokens in
    order after BOS (position 0). Positions at or past the EOS slot (76) are dropped; a phrase
    pushed out by truncation gets an empty list.
    """
    positions, cursor = [], 1
    for phrase in phrases:
        with _TOKENIZER_LOCK:
            n = len(tokenizer(phrase, add_special_tokens=False)["input_ids"])
        positions.append([p for p in range(cursor, cursor + n) if p < MAX_LENGTH - 1])
        cursor += n
    return positions


def encode_prompts(runner: Runner, tokenizer, prompt: str, negative_prompt: str) -> np.ndarray:
    """``[2, 77, D]`` float32: unconditional (negative prompt) then conditional embeddings."""
    ids = tokenize(tokenizer, [negative_prompt, prompt])
    return runner.infer("text_encoder", {"input_ids": ids}, ["last_hidden_state"])["last_hidden_state"]


def encode_phrases(runner: Runner, tokenizer, phrases: list[str]) -> np.ndarray:
    """``[N, D]`` float32 pooled embeddings, one per grounding phrase (GLIGEN's phrase features)."""
    if not phrases:
        return np.zeros((0, 0), np.float32)
    ids = tokenize(tokenizer, phrases)
    return runner.infer("text_encoder", {"input_ids": ids}, ["pooled_output"])["pooled_output"]
