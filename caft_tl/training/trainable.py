"""``Trainable``: the base model of fine-tuning runs, and how each run gets a fresh model to train and
keeps its weights. An organism is copied whole (:class:`FullWeights`); a real model keeps one copy
and re-initialises its LoRA adapters per run (:class:`caft_tl.real.lora.AdaptersOff`)."""

from __future__ import annotations

import abc
import dataclasses
from pathlib import Path
from typing import ClassVar

import torch

from caft_tl.core import models


class Trainable(abc.ABC):
    """What :mod:`caft_tl.training.finetunes` needs of a base model."""

    weights_file: ClassVar[str]
    """The file a kept fine-tune's weights are saved to, in its run folder."""

    @property
    @abc.abstractmethod
    def model(self) -> torch.nn.Module:
        """The base model (forward passes, hook names, interventions' checks)."""

    @abc.abstractmethod
    def base_hash(self) -> str:
        """A short hash identifying the base a cached run started from."""

    @abc.abstractmethod
    def fresh(self, seed: int) -> torch.nn.Module:
        """A model equal to the base whose trainable parameters the loop may change (``seed``: of
        any freshly initialised parameters)."""

    @abc.abstractmethod
    def save(self, model: torch.nn.Module, folder: Path) -> None:
        """Write a fine-tuned ``model``'s weights to ``folder / weights_file``."""

    @abc.abstractmethod
    def load(self, folder: Path) -> torch.nn.Module:
        """The fine-tuned model whose weights :meth:`save` wrote to ``folder``."""


class FullWeights(Trainable):
    """An organism (``HookedTransformer``): every run trains its own copy of every weight."""

    weights_file = "model.safetensors"

    def __init__(self, model: torch.nn.Module):
        self._model = model

    @property
    def model(self) -> torch.nn.Module:
        return self._model

    def base_hash(self) -> str:
        return models.weights_hash(self._model)

    def fresh(self, seed: int) -> torch.nn.Module:
        return models.copy_model(self._model)

    def save(self, model: torch.nn.Module, folder: Path) -> None:
        fields = dataclasses.fields(models.ModelConfig)
        models.save_model(
            model, folder, models.ModelConfig(**{f.name: getattr(model.cfg, f.name) for f in fields})
        )

    def load(self, folder: Path) -> torch.nn.Module:
        return models.load_model(folder)[0]


def as_trainable(base: torch.nn.Module | Trainable) -> Trainable:
    """``base`` itself when it is a :class:`Trainable`, else its :class:`FullWeights`.

    Example:
        >>> as_trainable(organism).fresh(seed=0)  # a copy of the organism to fine-tune
    """
    return base if isinstance(base, Trainable) else FullWeights(base)
