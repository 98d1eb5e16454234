"""Token datasets with response masks, position selectors and batching."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

POSITIONS = ("all", "prompt", "response")


@dataclass
class TokenDataset:
    """Fixed-length token sequences with a per-token response mask.

    ``response_mask[i, t]`` is True where token ``t`` of example ``i`` belongs to the response
    (what the fine-tune is trained to produce). ``labels`` holds per-example ground truth
    (e.g. the organism's hidden persona) for interpretation; it never reaches training.

    Args:
        tokens: [n, pos] token ids (right-padded).
        response_mask: [n, pos] True on the response tokens.
        labels: optional per-example tensors [n], never trained on.

    Example:
        tokens = model.to_tokens(["Q: 2+2? A: 4"])  # [1, pos]
        data = TokenDataset(tokens, torch.arange(tokens.shape[1]) >= tokens.shape[1] - 1)  # the last token
    """

    tokens: torch.Tensor  # [n, pos] long
    response_mask: torch.Tensor  # [n, pos] bool
    labels: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [n]

    def __post_init__(self) -> None:
        if self.tokens.shape != self.response_mask.shape:
            raise ValueError(
                f"tokens {tuple(self.tokens.shape)} and response_mask "
                f"{tuple(self.response_mask.shape)} must have the same shape"
            )
        self.response_mask = self.response_mask.bool()

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def target_mask(self) -> torch.Tensor:
        """[n, pos] bool: positions whose *next* token is a response token (where the loss is)."""
        mask = torch.zeros_like(self.response_mask)
        mask[:, :-1] = self.response_mask[:, 1:]
        return mask

    def position_mask(self, positions: str) -> torch.Tensor:
        """[n, pos] bool for a position selector: ``all``, ``prompt`` or ``response``.

        ``response`` means the positions that write the response (those predicting a response
        token), ``prompt`` the rest.
        """
        if positions == "all":
            return torch.ones_like(self.response_mask)
        if positions == "response":
            return self.target_mask
        if positions == "prompt":
            return ~self.target_mask
        raise ValueError(f"unknown positions {positions!r}; valid: {', '.join(POSITIONS)}")

    def subset(self, index: torch.Tensor | slice) -> TokenDataset:
        return TokenDataset(
            self.tokens[index],
            self.response_mask[index],
            {k: v[index] for k, v in self.labels.items()},
        )

    @classmethod
    def cat(cls, parts: list[TokenDataset]) -> TokenDataset:
        """The rows of ``parts`` in order (same width); the labels all parts carry."""
        widths = {p.tokens.shape[1] for p in parts}
        if len(widths) != 1:
            raise ValueError(f"datasets of widths {sorted(widths)} cannot be joined; pad them to one width")
        keys = set.intersection(*(set(p.labels) for p in parts))
        return cls(
            torch.cat([p.tokens for p in parts]),
            torch.cat([p.response_mask for p in parts]),
            {k: torch.cat([p.labels[k] for p in parts]) for k in parts[0].labels if k in keys},
        )

    def trimmed(self) -> TokenDataset:
        """Without the trailing columns that are padding in every row (uses ``labels['length']``,
        which right-padded datasets carry); unchanged otherwise."""
        if "length" not in self.labels or len(self) == 0:
            return self
        width = int(self.labels["length"].max())
        if width >= self.tokens.shape[1]:
            return self
        return TokenDataset(self.tokens[:, :width], self.response_mask[:, :width], self.labels)

    def batches(
        self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[TokenDataset]:
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        for start in range(0, len(self), batch_size):
            yield self.subset(order[start : start + batch_size])
