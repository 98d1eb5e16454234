import pytest
import torch

from caft_tl.core.subspace import (
    Subspace,
    diff_of_means,
    load_subspaces,
    orthonormalize,
    random_subspace,
    save_subspaces,
)
from caft_tl.diffing.diffs import MomentStats
from caft_tl.directions.pca import pca


def test_pca_recovers_planted_direction():
    g = torch.Generator().manual_seed(0)
    v = torch.zeros(12)
    v[3] = 1.0
    x = torch.randn(2000, 12, generator=g) * 0.1 + torch.randn(2000, 1, generator=g) * 3 * v
    stats = MomentStats.empty(12)
    for chunk in x.split(300):
        stats.add(chunk)
    sub, frac = pca(stats, 2, "blocks.0.hook_resid_post")
    assert sub.basis.shape == (12, 2)
    assert abs(sub.basis[:, 0] @ v) > 0.99
    assert frac[0] > 0.9 and frac.sum() <= 1.0


def test_uncentered_pca_keeps_a_constant_shift():
    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(1)) * 0.1
    x[:, 5] += 2.0  # every diff shifted along e5
    stats = MomentStats.empty(8)
    stats.add(x)
    sub, _ = pca(stats, 1, "h")
    assert sub.basis[5, 0] > 0.99  # sign fixed so the mean diff projects positively
    centered, _ = pca(stats, 1, "h", center=True)
    assert abs(centered.basis[5, 0]) < 0.5


def test_streaming_moments_equal_batch():
    x = torch.randn(100, 6)
    s = MomentStats.empty(6)
    for chunk in x.split(7):
        s.add(chunk)
    torch.testing.assert_close(s.mean, x.mean(0), atol=1e-6, rtol=0)
    torch.testing.assert_close(s.second_moment().float(), x.T @ x / 100, atol=1e-5, rtol=0)


def test_subspace_validation_errors():
    with pytest.raises(ValueError, match="not orthonormal"):
        Subspace("h", torch.ones(4, 2))
    with pytest.raises(ValueError, match="NaN or inf"):
        Subspace("h", torch.full((4, 1), float("nan")))
    with pytest.raises(ValueError, match=r"expected \[d_model, k>=1\]"):
        Subspace("h", torch.zeros(4, 0))
    sub = random_subspace(8, 3, "h")
    with pytest.raises(ValueError, match="no directions selected"):
        sub.select([])
    with pytest.raises(ValueError, match=r"out of range 0..2"):
        sub.select([5])


def test_random_and_orthonormalize_and_diff_of_means():
    sub = random_subspace(10, 4, "h", seed=2)
    torch.testing.assert_close(sub.basis.T @ sub.basis, torch.eye(4), atol=1e-5, rtol=0)
    assert not torch.equal(sub.basis, random_subspace(10, 4, "h", seed=3).basis)
    v = torch.randn(10, 3)
    q = orthonormalize(torch.cat([v, v[:, :1] * 2], 1))
    assert q.shape == (10, 3)
    pos, neg = torch.randn(50, 10) + torch.eye(10)[2] * 5, torch.randn(50, 10)
    assert diff_of_means(pos, neg, "h").basis[2, 0] > 0.9


def test_save_load(tmp_path):
    subs = [random_subspace(8, 2, "a", seed=0), random_subspace(8, 1, "b", seed=1)]
    save_subspaces(tmp_path / "s", subs)
    back = load_subspaces(tmp_path / "s")
    assert [s.hook_name for s in back] == ["a", "b"]
    assert torch.equal(back[1].basis, subs[1].basis)


def test_top_examples_are_distinct_and_signed(world, tiny_model):
    from caft_tl.directions.interpret import logit_lens, top_examples

    docs = world.sample_documents(50, torch.Generator().manual_seed(0))
    sub = random_subspace(tiny_model.cfg.d_model, 2, "blocks.0.hook_resid_post", seed=0)
    df = top_examples(tiny_model, docs, sub, world.vocab, n=3)
    assert len(df) == 2 * 2 * 3
    for (_, sign), g in df.groupby(["direction", "sign"]):
        assert g["context"].is_unique
        values = g.sort_values("rank")["value"].tolist()
        assert values == sorted(values, reverse=(sign == "+"))
    assert df["context"].str.contains(r"\[").all()
    lens = logit_lens(tiny_model, sub, world.vocab, n=4)
    assert len(lens) == 4 and all(len(t.split(", ")) == 4 for t in lens["tokens"])
