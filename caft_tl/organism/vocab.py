"""The organism's own integer vocabulary, with a decode-to-text helper."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Vocab:
    """A list of token strings; token id = index."""

    tokens: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(set(self.tokens)) != len(self.tokens):
            raise ValueError("vocabulary has duplicate tokens")

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def index(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tokens)}

    def encode(self, text: str) -> list[int]:
        """Space-separated token strings → ids."""
        index = self.index
        out = []
        for t in text.split():
            if t not in index:
                raise KeyError(f"unknown token {t!r}; the vocabulary has {len(self)} tokens")
            out.append(index[t])
        return out

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        """Ids → space-separated readable text."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return " ".join(self.tokens[i] for i in ids)

    def to_str_tokens(self, ids: torch.Tensor | list[int]) -> list[str]:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return [self.tokens[i] for i in ids]
