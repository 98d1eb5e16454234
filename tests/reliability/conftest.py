import subprocess
import sys
from pathlib import Path

import pytest

from caft_tl.core import models
from caft_tl.training.pretrain import PretrainConfig, load_or_pretrain

WORKER = Path(__file__).with_name("_worker.py")
TINY = models.ModelConfig(d_model=32, n_heads=2, d_head=16, d_mlp=64)


@pytest.fixture(scope="session")
def organism_dir(tmp_path_factory):
    """A briefly pre-trained tiny organism on disk (for subprocess workers)."""
    cache = tmp_path_factory.mktemp("cache")
    _, _, folder = load_or_pretrain(
        "persona_em",
        model_cfg=TINY,
        cfg=PretrainConfig(steps=100, batch_size=32),
        cache_dir=cache,
        progress=False,
    )
    return folder


def worker(*args, **popen):
    """Start ``_worker.py`` with ``args`` in a new Python process."""
    return subprocess.Popen(
        [sys.executable, str(WORKER), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )
