"""Diffing streams: 10x the data in the same peak memory."""

from .conftest import worker


def _peak_mib(organism_dir, n):
    p = worker("diffmem", organism_dir, n)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    return float(out.strip().splitlines()[-1])


def test_diffing_peak_memory_is_flat_in_dataset_size(organism_dir):
    small = _peak_mib(organism_dir, 1200)  # the default n_diff_examples
    large = _peak_mib(organism_dir, 12000)  # 10x
    # keeping the activations would cost 12000 x 4 positions x 32 dims x 4 B x 2 hooks x 2 models
    # ≈ 23 MiB more
    assert large - small < 8, f"peak RSS {small:.0f} MiB at 1x vs {large:.0f} MiB at 10x"
