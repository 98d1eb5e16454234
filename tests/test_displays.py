"""Token displays: circuitsvis views of top examples, with the bundle inline (offline, no CDN)."""

import re
from pathlib import Path

import circuitsvis
import torch

from caft_tl.core.subspace import random_subspace
from caft_tl.directions.interpret import projections, top_examples
from caft_tl.plotting import displays

BUNDLE = (
    (Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js")
    .read_text(encoding="utf-8")
    .replace("</script>", "")
)


def _view(world, tiny_model, n=3):
    docs = world.sample_documents(40, torch.Generator().manual_seed(0))
    sub = random_subspace(tiny_model.cfg.d_model, 2, "blocks.0.hook_resid_post", seed=0)
    return docs, sub, displays.direction_view(tiny_model, docs, sub, world.vocab, n=n)


def test_samples_are_the_top_examples_with_a_value_per_token(world, tiny_model):
    docs, sub, _ = _view(world, tiny_model)
    table = top_examples(tiny_model, docs, sub, world.vocab, n=3)
    proj = projections(tiny_model, docs, sub)
    tokens, acts = displays.top_samples(proj, docs, sub.labels, world.vocab, n=3)
    assert len(tokens) == 2 and all(len(per_sign) == 2 for per_sign in tokens)
    for j, label in enumerate(sub.labels):
        for s, sign in enumerate("+-"):
            rows = table[(table["direction"] == label) & (table["sign"] == sign)].sort_values("rank")
            assert [" ".join(t[:-1] + [f"[{t[-1]}]"]) for t in tokens[j][s]] == rows["context"].tolist()
            assert [len(a) for a in acts[j][s]] == [len(t) for t in tokens[j][s]]
            factor = (
                1 if sign == "+" else -1
            )  # the − panel is negated: its strongest example is the most coloured
            assert torch.allclose(
                torch.tensor([a[-1] for a in acts[j][s]]),
                factor * torch.tensor(rows["value"].tolist()),
                atol=1e-5,
            )


def test_views_inline_the_bundle_and_never_link_a_cdn(world, tiny_model, tmp_path):
    _, _, view = _view(world, tiny_model)
    for html in (view._repr_html_(), view.save(tmp_path / "view.html").read_text(encoding="utf-8")):
        assert BUNDLE[:2000] in html and len(html) > len(BUNDLE)
        assert '"TopkSamples"' in html or "CircuitsVis.TopkSamples" in html
        assert not re.search(r"unpkg|jsdelivr|cdn\.|<script[^>]*\bsrc=", html, flags=re.I)
    assert (tmp_path / "view.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir()] == ["view.html"]


def test_latent_view_shows_each_latents_top_examples(world, tiny_model):
    from caft_tl.directions import sae

    hook = "blocks.0.hook_resid_post"
    untrained = sae.train_sae(
        sae.training_activations(tiny_model, world, hook, 20, 0),
        sae.SAETrainConfig(architecture="topk", k=8, steps=0, batch_size=64, expansion=4),
        hook,
        progress=False,
    )
    docs = world.sample_documents(40, torch.Generator().manual_seed(0))
    view = displays.latent_view(tiny_model, docs, untrained, [0, 3], world.vocab, n=2)
    assert BUNDLE[:2000] in view._repr_html_() and '"L3"' in view._repr_html_() and hook in view.title
