"""Prompts with an exact input token count.

completions: token-id prompts (`prompt: [ids]`), random ids seeded per request, so prefix caching neither helps nor
hurts unless a shared prefix is asked for; or text, where the framework's router rejects ids (LoadSpec
completions_prompt). chat and text prompts: text built to an exact count with a tokenizer:
  words       one token per whitespace-separated word (the emulator's documented rule)
  hf:<dir>    a Hugging Face tokenizer from a local folder (no hub access); the count is of the message content,
              the chat template adds its own tokens on top.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from suite.config import ConfigError


class WordsTokenizer:
    name = "words"

    def text(self, ids: list[int]) -> str:
        return " ".join(f"w{i}" for i in ids)

    def count(self, text: str) -> int:
        return len(text.split())


class HFTokenizer:
    """Exact-count text for a real tokenizer: join single-token words, then verify and trim/extend until exact."""

    def __init__(self, folder: str) -> None:
        self.name = f"hf:{folder}"
        path = Path(folder).expanduser()
        try:
            if (path / "tokenizer.json").is_file():
                from tokenizers import Tokenizer

                tok = Tokenizer.from_file(str(path / "tokenizer.json"))
                self._encode = lambda s: tok.encode(s, add_special_tokens=False).ids
                self._decode = tok.decode
                vocab = tok.get_vocab_size()
            else:
                from transformers import AutoTokenizer

                tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
                self._encode = lambda s: tok.encode(s, add_special_tokens=False)
                self._decode = tok.decode
                vocab = len(tok)
        except ImportError as e:
            raise ConfigError(f"tokenizer {self.name} needs the `tokenizers` or `transformers` package: {e}") from e
        except Exception as e:
            raise ConfigError(f"cannot load tokenizer {self.name}: {e}") from e
        # words w such that " w" is exactly one token: joined with spaces they count one each (verified below)
        words = []
        for i in range(min(vocab, 50000)):
            w = self._decode([i]).strip()
            if w.isalpha() and w.isascii() and len(self._encode(" " + w)) == 1 and len(self._encode(w)) == 1:
                words.append(w)
        if len(words) < 16:
            raise ConfigError(f"tokenizer {self.name}: too few single-token words to build exact prompts")
        self.words = words

    def count(self, text: str) -> int:
        return len(self._encode(text))

    def text(self, ids: list[int]) -> str:
        n = len(ids)
        words = [self.words[i % len(self.words)] for i in ids]
        for _ in range(20):
            text = " ".join(words)
            got = self.count(text)
            if got == n:
                return text
            if got > n:
                words = words[: len(words) - (got - n)]
            else:
                words += [self.words[(len(words) * 7919) % len(self.words)] for _ in range(n - got)]
        raise ConfigError(f"tokenizer {self.name}: could not build a prompt of exactly {n} tokens")


@functools.lru_cache(maxsize=4)  # a persistent worker builds a real tokenizer's word list once, not per point
def make_tokenizer(spec: str):
    if spec == "words":
        return WordsTokenizer()
    if spec.startswith("hf:"):
        return HFTokenizer(spec[3:])
    if spec == "auto":
        raise ConfigError("tokenizer 'auto' is resolved from the deployment (pdsuite run / pdsuite load --deployment);"
                          " without one set tokenizer: words or hf:<local folder>")
    raise ConfigError(f"unknown tokenizer {spec!r}: use 'auto', 'words' or 'hf:<local folder>'")


class PromptBuilder:
    def __init__(self, api: str, tokenizer: str, seed: int, shared_prefix_tokens: int,
                 token_id_range: tuple[int, int], text: bool | None = None) -> None:
        """text: build text prompts (default: only for chat; completions send token ids unless text=True)."""
        self.api = api
        self.lo, self.hi = token_id_range
        self.tok = make_tokenizer(tokenizer) if (api == "chat" if text is None else text) else None
        rng = np.random.default_rng([seed, 0x5EED])
        self.prefix = rng.integers(self.lo, self.hi, size=shared_prefix_tokens).tolist()

    def build(self, rng: np.random.Generator, n: int) -> list[int] | str:
        k = len(self.prefix)
        ids = self.prefix + rng.integers(self.lo, self.hi, size=max(0, n - k)).tolist()
        if self.tok is None:
            return ids
        return self.tok.text(ids)
