"""Every public entry checks its inputs: interventions, subspaces and hook names are refused in one
line naming the value (and the closest valid names) before any work; a subspace cannot be made
invalid after it is made."""

import dataclasses
import pickle

import pytest
import torch

from caft_tl.core import activations, models
from caft_tl.core.subspace import Subspace, random_subspace
from caft_tl.interventions import checks
from caft_tl.interventions.intervention import Intervention
from caft_tl.organism import judge
from caft_tl.training.loop import FinetuneConfig, finetune

HOOK = "blocks.0.hook_resid_post"


def _one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    return msg


@pytest.fixture
def data(world):
    return world.finetune_dataset(16)


@pytest.mark.parametrize(
    "hook, message",
    [
        (
            "blocks.0.hook_resid_pots",
            r"unknown hook name 'blocks.0.hook_resid_pots'; closest: blocks.0.hook_resid_post",
        ),
        (
            "blocks.7.hook_resid_post",
            r"hook 'blocks.7.hook_resid_post': layer 7 out of range; this model has layers 0..1",
        ),
    ],
)
def test_finetune_refuses_a_bad_hook_before_any_step(tiny_model, data, hook, message):
    model = models.copy_model(tiny_model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    iv = Intervention("zero", [random_subspace(tiny_model.cfg.d_model, 2, hook)])
    with pytest.raises(ValueError, match=message) as e:
        finetune(model, data, FinetuneConfig(n_examples=16, batch_size=8), iv, progress=False)
    _one_line(e)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing trained


def test_finetune_refuses_a_subspace_of_the_wrong_width(tiny_model, data):
    iv = Intervention("zero", [random_subspace(48, 2, HOOK)])
    with pytest.raises(
        ValueError,
        match=r"subspace at 'blocks.0.hook_resid_post' has width 48, but the model's d_model is 32",
    ) as e:
        finetune(
            models.copy_model(tiny_model),
            data,
            FinetuneConfig(n_examples=16, batch_size=8),
            iv,
            progress=False,
        )
    _one_line(e)


def test_finetune_refuses_what_is_not_an_intervention_and_a_bad_config(tiny_model, data):
    with pytest.raises(TypeError, match=r"intervention is list; expected an Intervention"):
        finetune(tiny_model, data, FinetuneConfig(), [(HOOK, lambda h, hook: h)], progress=False)
    with pytest.raises(ValueError, match=r"FinetuneConfig.batch_size = 0; expected a positive int"):
        finetune(tiny_model, data, FinetuneConfig(batch_size=0), progress=False)
    with pytest.raises(ValueError, match=r"FinetuneConfig.lr = nan; expected a positive finite number"):
        finetune(tiny_model, data, FinetuneConfig(lr=float("nan")), progress=False)


def test_bare_model_hooks_path_names_hook_and_widths(tiny_model, data):
    """``model.hooks(fwd_hooks=iv.fwd_hooks(...))`` as the README shows it: no model was given to
    check against, so the hook function itself refuses the activation before the matmul."""
    iv = Intervention("zero", [random_subspace(48, 2, HOOK)])
    with pytest.raises(ValueError) as e, tiny_model.hooks(fwd_hooks=iv.fwd_hooks(data)):
        models.response_loss(tiny_model, data)
    assert _one_line(e).startswith(
        "hook 'blocks.0.hook_resid_post': the subspace has width 48 but the activation has width 32"
    )


def test_other_entries_check_their_hooks(tiny_model, data):
    bad = Intervention("zero", [random_subspace(32, 1, "blocks.0.hook_resid_pots")])
    with pytest.raises(
        ValueError, match=r"unknown hook name 'blocks.0.hook_resid_pots'; closest: blocks.0.hook_resid_post"
    ):
        checks.mean_projection(tiny_model, data, bad)
    with pytest.raises(ValueError, match=r"unknown hook name 'blocks.0.hook_resid_pots'"):
        judge.next_token_probs(tiny_model, data, fwd_hooks=bad.fwd_hooks())
    with pytest.raises(ValueError, match=r"unknown hook name 'blocks.0.hook_resid_pots'"):
        activations.activations(tiny_model, data, HOOK, fwd_hooks=bad.fwd_hooks())
    with pytest.raises(TypeError, match=r"is not a \(hook_name, fn\) pair"):
        judge.next_token_probs(tiny_model, data, fwd_hooks=[HOOK])


# ---------------------------------------------------------------------- subspaces stay valid


def test_a_subspace_cannot_be_made_invalid_after_construction():
    sub = random_subspace(8, 2, HOOK)
    with pytest.raises(dataclasses.FrozenInstanceError):
        sub.basis = torch.ones(8, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        sub.reference_mean = torch.zeros(8)
    q = sub.basis.clone()
    mine = Subspace(HOOK, q)
    q.mul_(3)  # the caller's tensor, edited in place afterwards
    assert torch.allclose(mine.basis.T @ mine.basis, torch.eye(2), atol=1e-5)
    with pytest.raises(ValueError, match=r"subspace basis at 'blocks.0.hook_resid_post' is not orthonormal"):
        dataclasses.replace(sub, basis=torch.ones(8, 2))


@pytest.mark.parametrize(
    "edit",
    [
        lambda s: s.basis.mul_(2),
        lambda s: s.basis.__setitem__((0, 0), 5.0),
        lambda s: s.reference_mean.add_(1),
    ],
)
def test_an_in_place_edit_of_a_subspace_is_refused_where_an_intervention_takes_it(tiny_model, edit):
    sub = random_subspace(tiny_model.cfg.d_model, 2, HOOK).with_mean(torch.zeros(tiny_model.cfg.d_model))
    iv = Intervention("steer_mean", [sub], scale=1.0)
    iv.fwd_hooks()  # intact: taken
    pickle.loads(pickle.dumps(iv)).fwd_hooks()  # and in a worker process (torch rebuilds tensors in place)
    edit(sub)
    message = r"^the subspace at 'blocks.0.hook_resid_post' was edited in place after it was made"
    takes = (lambda: Intervention("steer_mean", [sub], scale=1.0), iv.fwd_hooks, lambda: iv.check(tiny_model))
    for take in takes:
        with pytest.raises(ValueError, match=message) as e:
            take()
        _one_line(e)


@pytest.mark.parametrize(
    "mu, message",
    [
        (torch.full((8,), float("nan")), r"reference mean at 'blocks.0.hook_resid_post' contains NaN or inf"),
        (torch.zeros(9), r"reference mean at 'blocks.0.hook_resid_post' has shape \(9,\); expected \[8\]"),
        (
            torch.zeros(1, 8),
            r"reference mean at 'blocks.0.hook_resid_post' has shape \(1, 8\); expected \[8\]",
        ),
    ],
)
def test_reference_mean_is_checked_like_the_basis(mu, message):
    sub = random_subspace(8, 2, HOOK)
    with pytest.raises(ValueError, match=message) as e:
        sub.with_mean(mu)
    _one_line(e)
    with pytest.raises(ValueError, match=message):
        Subspace(HOOK, sub.basis, reference_mean=mu)
    good = sub.with_mean(torch.ones(8))
    assert good.reference_mean is not None and sub.reference_mean is None  # a copy; the original unchanged


def test_bases_off_orthonormal_beyond_tolerance_are_refused():
    q = random_subspace(8, 2, HOOK).basis
    Subspace(HOOK, q * (1 + 1e-6))  # float tolerance
    with pytest.raises(ValueError, match="is not orthonormal"):
        Subspace(HOOK, q * 1.01)
    with pytest.raises(ValueError, match=r"has 2 directions but 3 labels"):
        Subspace(HOOK, q, ["a", "b", "c"])
