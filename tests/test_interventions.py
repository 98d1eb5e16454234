import pytest
import torch

from caft_tl.core.subspace import random_subspace
from caft_tl.interventions.intervention import Intervention
from caft_tl.interventions.modes import MODES

D, K = 16, 3


def _setup(seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(2, 5, D, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(D, K, generator=g, dtype=torch.float64))
    mu = torch.randn(D, generator=g, dtype=torch.float64)
    upstream = torch.randn(2, 5, D, generator=g, dtype=torch.float64)  # dL/d(output)
    return h, q, mu, upstream


def _forward_and_grad(mode, scale=1.0):
    h, q, mu, up = _setup()
    h = h.clone().requires_grad_(True)
    out = MODES[mode].fn(h, q, mu, scale)
    (out * up).sum().backward()
    return h.detach(), q, mu, up, out.detach(), h.grad


P_CASES = {
    # mode: (forward(h, P, mu, scale), gradient projector is I - P ?)
    "zero": (lambda h, P, mu, s: h - h @ P, True),
    "mean": (lambda h, P, mu, s: h - (h - mu) @ P, True),
    "detached": (lambda h, P, mu, s: h - h @ P, False),
    "grad_only": (lambda h, P, mu, s: h, True),
    "steer_mean": (lambda h, P, mu, s: h - h @ P + s * mu @ P, True),
}


@pytest.mark.parametrize("mode", list(P_CASES))
@pytest.mark.parametrize("scale", [1.0, -3.0])
def test_forward_and_gradient_match_definition(mode, scale):
    h, q, mu, up, out, grad = _forward_and_grad(mode, scale)
    P = q @ q.T
    fwd, projected = P_CASES[mode]
    torch.testing.assert_close(out, fwd(h, P, mu, scale), atol=1e-10, rtol=0)
    expected_grad = up - up @ P if projected else up
    torch.testing.assert_close(grad, expected_grad, atol=1e-10, rtol=0)


def test_add_forward_and_gradient():
    h, q, mu, up, out, grad = _forward_and_grad("add", 4.0)
    torch.testing.assert_close(out, h + 4.0 * q.sum(-1), atol=1e-10, rtol=0)
    torch.testing.assert_close(grad, up)


def test_grad_only_forward_is_bit_identical_and_detached_gradient_identical():
    h, q, mu, up = _setup(1)
    h32, q32 = h.float(), q.float()
    assert torch.equal(MODES["grad_only"].fn(h32, q32, None, 1.0), h32)
    x = h32.clone().requires_grad_(True)
    (MODES["detached"].fn(x, q32, None, 1.0) * up.float()).sum().backward()
    assert torch.equal(x.grad, up.float())


def test_steer_mean_k1_equals_mean():
    h, q, mu, _ = _setup(2)
    torch.testing.assert_close(MODES["steer_mean"].fn(h, q, mu, 1.0), MODES["mean"].fn(h, q, mu, 1.0))


def test_zero_ablation_hook_removes_subspace_in_model(tiny_model, world):
    hook = "blocks.0.hook_resid_post"
    sub = random_subspace(tiny_model.cfg.d_model, 2, hook, seed=3)
    iv = Intervention("zero", [sub])
    tokens = world.eval_prompts("chat").tokens
    seen = {}

    def grab(h, hook):  # runs after the intervention's hook at the same point
        seen["h"] = h.clone()

    with tiny_model.hooks(fwd_hooks=iv.fwd_hooks() + [(hook, grab)]):
        tiny_model(tokens)
    assert seen["h"].shape == (len(tokens), tokens.shape[1], tiny_model.cfg.d_model)
    assert (seen["h"] @ sub.basis).abs().max() < 1e-5
    plain = tiny_model(tokens)
    with tiny_model.hooks(fwd_hooks=iv.fwd_hooks()):
        ablated = tiny_model(tokens)
    assert not torch.allclose(plain, ablated)


def test_position_mask_only_touches_response_positions(tiny_model, world):
    hook = "blocks.0.hook_resid_post"
    sub = random_subspace(tiny_model.cfg.d_model, 2, hook, seed=4)
    batch = world.finetune_dataset(8)
    iv = Intervention("zero", [sub], positions="response")
    got = {}
    with tiny_model.hooks(
        fwd_hooks=iv.fwd_hooks(batch) + [(hook, lambda h, hook: got.setdefault("h", h.clone()))]
    ):
        tiny_model(batch.tokens)
    _, cache = tiny_model.run_with_cache(batch.tokens, names_filter=[hook])
    raw = cache[hook]
    mask = batch.position_mask("response")
    assert mask.sum() == len(batch)  # one position per example predicts the answer
    assert torch.allclose(got["h"][~mask], raw[~mask])
    assert (got["h"][mask] @ sub.basis).abs().max() < 1e-5


def test_errors_are_one_line_and_name_the_bad_value(tiny_model):
    sub = random_subspace(tiny_model.cfg.d_model, 1, "blocks.0.hook_resid_post")
    with pytest.raises(ValueError, match="unknown intervention mode 'zeroo'; valid: zero"):
        Intervention("zeroo", [sub])
    with pytest.raises(ValueError, match="needs a reference mean"):
        Intervention("mean", [sub])
    with pytest.raises(ValueError, match="unknown positions 'middle'"):
        Intervention("zero", [sub], positions="middle")
    wide = random_subspace(tiny_model.cfg.d_model + 1, 1, "blocks.0.hook_resid_post")
    with pytest.raises(ValueError, match=r"width 33, but the model's d_model is 32"):
        Intervention("zero", [wide]).check(tiny_model)
    bad_hook = random_subspace(tiny_model.cfg.d_model, 1, "blocks.7.hook_resid_post")
    with pytest.raises(ValueError, match="layer 7 out of range; this model has layers 0..1"):
        Intervention("zero", [bad_hook]).check(tiny_model)


def test_save_load_roundtrip(tmp_path):
    sub = random_subspace(D, 2, "blocks.0.hook_resid_post", seed=1)
    sub = sub.with_mean(torch.randn(D))
    iv = Intervention("steer_mean", [sub], positions="response", scale=-3.0, name="x")
    iv.save(tmp_path / "iv")
    back = Intervention.load(tmp_path / "iv")
    assert (back.mode, back.positions, back.scale, back.name) == ("steer_mean", "response", -3.0, "x")
    assert torch.equal(back.subspaces[0].basis, sub.basis)
    assert torch.equal(back.subspaces[0].reference_mean, sub.reference_mean)


def test_apply_is_model_hooks_with_the_intervention_and_removes_them_after(tiny_model, world):
    hook = "blocks.0.hook_resid_post"
    iv = Intervention("zero", [random_subspace(tiny_model.cfg.d_model, 2, hook, seed=4)])
    tokens = world.eval_prompts("chat").tokens[:4]
    plain = tiny_model(tokens)
    with tiny_model.hooks(fwd_hooks=iv.fwd_hooks()):
        expected = tiny_model(tokens)
    with iv.apply(tiny_model) as m:
        assert m is tiny_model
        torch.testing.assert_close(tiny_model(tokens), expected, atol=0, rtol=0)
    assert not torch.allclose(expected, plain)
    torch.testing.assert_close(tiny_model(tokens), plain, atol=0, rtol=0)  # hooks gone on exit
    with pytest.raises(RuntimeError, match="inside"):
        with iv.apply(tiny_model):
            raise RuntimeError("inside")
    torch.testing.assert_close(tiny_model(tokens), plain, atol=0, rtol=0)  # and gone after an error


def test_apply_checks_hook_names_and_positions_before_running(tiny_model):
    bad = Intervention("zero", [random_subspace(tiny_model.cfg.d_model, 1, "blocks.0.hook_resid_pots")])
    with pytest.raises(ValueError, match="closest: blocks.0.hook_resid_post"):
        with bad.apply(tiny_model):
            pytest.fail("the body ran with a bad hook name")
    sub = random_subspace(tiny_model.cfg.d_model, 1, "blocks.0.hook_resid_post")
    masked = Intervention("zero", [sub], positions="response")
    with pytest.raises(ValueError, match="needs the batch"):
        with masked.apply(tiny_model):
            pytest.fail("the body ran without a position mask")
