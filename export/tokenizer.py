"""A small CLIP BPE vocabulary for the tiny and full random presets.

Real checkpoints bring their own ``tokenizer/`` folder. The random presets have no vocabulary
to download, so the project writes one: the 256 byte symbols of CLIP's byte-level BPE (each
also with the end-of-word marker ``</w>``), merges that spell every word of the shipped class
names (so ``knife`` is one token, as in real CLIP), and the two special tokens last.

Files written are ``vocab.json`` and ``merges.txt`` in the layout ``CLIPTokenizer`` reads.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
MAX_LENGTH = 77
EXTRA_WORDS = ("a", "an", "the", "x-ray", "image", "of", "in", "bag", "baggage", "and")


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins for bytes used by byte-level BPE, indexed by byte value.

    Printable Latin-1 bytes map to themselves; the others are shifted to code points 256+ in
    increasing byte order (the GPT-2/CLIP convention).
    """
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    symbols, shift = [], 0
    for b in range(256):
        if b in keep:
            symbols.append(chr(b))
        else:
            symbols.append(chr(256 + shift))
            shift += 1
    return symbols


def class_name_words() -> list[str]:
    """Lower-case words of every class name in the shipped class-group files, plus a few prompt words."""
    words: set[str] = set(EXTRA_WORDS)
    folder = resources.files("xsyn") / "data" / "class_groups"
    for entry in folder.iterdir():
        if entry.name.endswith(".json"):
            groups = json.loads(entry.read_text())["groups"]
            for group in groups:
                for name in group["classes"]:
                    words.update(re.findall(r"[a-z]+|[0-9]", name.lower()))
    return sorted(words)


def build_vocab(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary (token -> id) and ordered merges that spell each word as one token."""
    symbols = byte_symbols()
    vocab_tokens = symbols + [s + "</w>" for s in symbols]
    merges: list[tuple[str, str]] = []
    seen = set(vocab_tokens)
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        current = pieces[0]
        for nxt in pieces[1:]:
            pair = (current, nxt)
            current = current + nxt
            if current not in seen:
                merges.append(pair)
                vocab_tokens.append(current)
                seen.add(current)
    vocab_tokens += [START_TOKEN, END_TOKEN]
    return {tok: i for i, tok in enumerate(vocab_tokens)}, merges


def write_tokenizer_files(folder: Path) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` for the project vocabulary into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab(class_name_words())
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n")
    return folder


def load_tokenizer(folder: Path):
    """A ``transformers.CLIPTokenizer`` from a folder with ``vocab.json`` + ``merges.txt``.

    Works for this project's vocabulary and for a checkpoint's ``tokenizer/`` folder alike.
    ``model_max_length`` is set to 77 explicitly: without it truncation fails on hand-written
    vocabularies.
    """
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=MAX_LENGTH, local_files_only=True)


def tokenizer_ids(folder: Path) -> dict[str, int]:
    """Vocabulary size and the special-token ids a matching ``CLIPTextConfig`` needs."""
    vocab = json.loads((folder / "vocab.json").read_text())
    return {
        "vocab_size": len(vocab),
        "bos_token_id": vocab[START_TOKEN],
        "eos_token_id": vocab[END_TOKEN],
        "pad_token_id": vocab[END_TOKEN],
    }
