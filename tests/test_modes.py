import pytest
import torch

from caft_tl.core.subspace import random_subspace
from caft_tl.interventions import modes
from caft_tl.interventions.intervention import Intervention
from caft_tl.interventions.modes import MODES, ModeSpec, get_mode, register_mode

D = 8


@pytest.fixture
def scratch_registry(monkeypatch):
    """A copy of the registry for the test to add to; the real one is restored after."""
    monkeypatch.setattr(modes, "MODES", dict(MODES))
    return modes.MODES


def test_every_mode_has_one_spec():
    assert list(MODES) == ["zero", "mean", "detached", "grad_only", "steer_mean", "add"]
    for name, spec in MODES.items():
        assert isinstance(spec, ModeSpec) and spec.name == name and callable(spec.fn) and spec.description
    assert {n for n, s in MODES.items() if s.needs_mean} == {"mean", "steer_mean"}
    assert {n: s.scale for n, s in MODES.items() if s.scale} == {"steer_mean": "k", "add": "alpha"}


def test_duplicate_registration_raises(scratch_registry):
    with pytest.raises(ValueError, match="intervention mode 'zero' is already registered"):
        register_mode("zero")(lambda h, q, mu, scale: h)
    assert scratch_registry["zero"].fn is MODES["zero"].fn


def test_get_mode_names_the_valid_modes():
    assert get_mode("add") is MODES["add"]
    with pytest.raises(
        ValueError,
        match=r"^unknown intervention mode 'zeroo'; valid: zero, mean, detached, grad_only, steer_mean, add$",
    ):
        get_mode("zeroo")


def test_intervention_reads_param_label_and_mean_from_the_spec(scratch_registry):
    @register_mode("scaled", needs_mean=True, scale="beta", description="multiply by beta")
    def scaled(h, q, mu, scale):
        return scale * h

    sub = random_subspace(D, 1, "blocks.0.hook_resid_post")
    with pytest.raises(ValueError, match="mode 'scaled' needs a reference mean"):
        Intervention("scaled", [sub])
    sub = sub.with_mean(torch.zeros(D))
    iv = Intervention("scaled", [sub], scale=2.0)
    assert iv.spec is scratch_registry["scaled"] and iv.param == "beta=2" and iv.label == "scaled beta=2"
    ((_, hook),) = iv.fwd_hooks()
    h = torch.randn(1, 3, D)
    assert torch.equal(hook(h, hook=None), 2.0 * h)


def test_results_table_strings_are_unchanged():
    sub = random_subspace(D, 1, "blocks.0.hook_resid_post")
    sub = sub.with_mean(torch.zeros(D))
    ivs = [
        Intervention(m, [sub], scale=s)
        for m, s in [("zero", 1.0), ("steer_mean", -3.0), ("add", 4.0), ("add", 0.5)]
    ]
    assert [iv.param for iv in ivs] == ["", "k=-3", "alpha=4", "alpha=0.5"]
    assert [iv.label for iv in ivs] == ["zero", "steer_mean k=-3", "add alpha=4", "add alpha=0.5"]
