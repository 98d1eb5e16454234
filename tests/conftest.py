import pytest
import torch

from caft_tl.core import models
from caft_tl.organism import make_task


@pytest.fixture(scope="session")
def world():
    return make_task("persona_em")


@pytest.fixture(scope="session")
def tiny_model(world):
    """An untrained 2-layer organism-shaped model (d_model 32) for fast shape/hook tests."""
    torch.manual_seed(0)
    cfg = models.ModelConfig(d_model=32, n_heads=2, d_head=16, d_mlp=64)
    return models.build_model(cfg, len(world.vocab), seed=0, device="cpu")


models.set_cpu_threads()
