"""The thread's questions about CAFT, answered from the results rows of a population.

Each answer is a number with its 95% interval over organisms (over fine-tuning seeds when there
is one organism) and a verdict that reads the interval, or "not measured" where the rows are
missing; an effect on a rate below :data:`MIN_EFFECT` reads as no measurable difference. Effects are
signed so that positive is *better* on the OOD split: toward the base model
and away from plain fine-tuning's generalisation (``effect(m) = s · (m − plain)``, ``s`` the sign
of ``base − plain``).

- **a** zero-ablating the chosen directions on the *untrained* base: toward or away from the
  behaviour plain fine-tuning learns, and the sign of the base model's mean projection;
- **b** the SAE latents chosen as the concept's: up or down under that ablation;
- **c** / **d** the activation-only (``detached``) / gradient-only (``grad_only``) part: how much of
  CAFT's effect it recovers;
- **e** which sign of k in ``steer_mean`` helps, and whether the best k reaches CAFT's effect;
- **f** CAFT against preventative steering (``add``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from caft_tl.core import results
from caft_tl.core.stats import ci95

#: question id -> the question
QUESTIONS = {
    "a": "Zero-ablating the chosen directions on the untrained base: toward or away from the behaviour?",
    "b": "Do the concept SAE latents go up or down under that ablation?",
    "c": "Does the activation-only part (detached) recover CAFT's effect?",
    "d": "Does the gradient-only part (grad_only) recover CAFT's effect?",
    "e": "Which sign of k in steer_mean helps, and does the best k reach CAFT's effect?",
    "f": "CAFT (zero) vs preventative steering (add)?",
}
#: question id -> a short label (figures)
SHORT = {
    "a": "a · zero on the base",
    "b": "b · SAE latents",
    "c": "c · detached vs CAFT",
    "d": "d · grad_only vs CAFT",
    "e": "e · best steer k vs CAFT",
    "f": "f · CAFT vs add",
}
#: question id -> what its value is
VALUES = {
    "a": "OOD change on the base, + toward the behaviour",
    "b": "mean change of the concept latents' activation",
    "c": "effect(detached) − effect(CAFT)",
    "d": "effect(grad_only) − effect(CAFT)",
    "e": "effect(best k) − effect(CAFT)",
    "f": "effect(CAFT) − effect(best add)",
}
#: question id -> the unit of its value (the y axis of its panel)
UNITS = {
    "a": "Δ rate on the base, + toward",
    "b": "Δ latent activation",
    "c": "Δ effect (rate)",
    "d": "Δ effect (rate)",
    "e": "Δ effect (rate)",
    "f": "Δ effect (rate)",
}
COLUMNS = ["question", "text", "answer", "value", "low", "high", "n", "over"]


def _interval(values: pd.Series) -> tuple[float, float, float, int]:
    m, lo, hi = ci95(values.dropna())
    return m, lo, hi, int(values.notna().sum())


#: effects on a rate smaller than this (0–1 scale) read as "no measurable difference" even where the
#: interval excludes 0 (five seeds that all sit at 0.000 give a tight interval around a nil effect)
MIN_EFFECT = 0.02


def _sign_word(
    m: float,
    lo: float,
    hi: float,
    n: int,
    up: str,
    down: str,
    none: str = "no measurable difference",
    min_effect: float = MIN_EFFECT,
) -> str:
    if n == 0 or np.isnan(lo):
        return "not measured"
    word = up if lo > 0 and m >= min_effect else down if hi < 0 and m <= -min_effect else none
    return f"{word} (one value: no interval)" if n == 1 else word


def answers(
    table: pd.DataFrame,
    ood_split: str,
    metric: str,
    directions: str = "pca",
    organisms: list[str] | None = None,
) -> pd.DataFrame:
    """One row per question (columns :data:`COLUMNS`) from a population's rows (any organisms;
    ``organisms`` keeps the valid ones). ``directions``: the chosen set the family used."""
    t = table if organisms is None else table[table["organism"].isin(organisms)]
    ood = results.select(t, split=ood_split, metric=metric)
    over = "organisms" if t["organism"].nunique() > 1 else "fine-tuning seeds"
    unit = "organism" if over == "organisms" else "seed"

    def trained(method: str, dirs: str, param: str | None = None) -> pd.Series:
        r = ood[ood["trained"] & (ood["method"] == method) & (ood["directions"] == dirs)]
        if param is not None:
            r = r[r["param"] == param]
        return r.groupby(unit)["value"].mean() if unit == "organism" else r.set_index("seed")["value"]

    def untrained(method: str, dirs: str) -> pd.Series:
        r = ood[~ood["trained"] & (ood["method"] == method) & (ood["directions"] == dirs)]
        return r.groupby("organism")["value"].mean()

    base, plain = untrained("base", "none"), trained("plain", "none")
    per_org_plain = ood[ood["trained"] & (ood["method"] == "plain")].groupby("organism")["value"].mean()
    s = np.sign(base - per_org_plain)  # per organism: + where higher is better
    sign = s if unit == "organism" else pd.Series(float(s.iloc[0]) if len(s) else np.nan, index=plain.index)
    effect = lambda v: sign * (v - plain)
    rows = []

    def add(q: str, answer: str, values: pd.Series | None, n_over: str = over) -> None:
        m, lo, hi, n = (
            _interval(values) if values is not None and len(values) else (np.nan, np.nan, np.nan, 0)
        )
        rows.append(
            {
                "question": q,
                "text": QUESTIONS[q],
                "answer": answer if n else "not measured",
                "value": m,
                "low": lo,
                "high": hi,
                "n": n,
                "over": n_over,
            }
        )

    # a: toward the behaviour = the direction plain fine-tuning moved the base
    ablated = untrained("zero", directions)
    toward = (ablated - base) * np.sign(per_org_plain - base)
    proj = t[
        ~t["trained"]
        & (t["method"] == "base")
        & t["directions"].astype(str).str.startswith(f"{directions}/")
        & (t["metric"] == "mean_projection")
        & (t["split"] == "finetune_data")
    ]
    pos = (
        f"; mean projection on the fine-tuning data positive on "
        f"{int((proj['value'] > 0).sum())}/{len(proj)} directions"
        if len(proj)
        else ""
    )
    m, lo, hi, n = _interval(toward)
    add(
        "a",
        _sign_word(m, lo, hi, n, "toward the behaviour", "away from the behaviour") + pos,
        toward,
        "organisms",
    )

    # b: the concept SAE latents under zero-ablation of the chosen directions, against the base model
    lat = t[
        ~t["trained"]
        & t["metric"].astype(str).str.startswith("sae_latent_")
        & (t["split"] == "finetune_data")
    ]
    on = (
        lat[(lat["method"] == "zero") & (lat["directions"] == directions)].groupby("organism")["value"].mean()
    )
    off = lat[(lat["method"] == "base") & (lat["directions"] == "none")].groupby("organism")["value"].mean()
    change = (on - off).dropna()
    m, lo, hi, n = _interval(change)
    add(
        "b",
        _sign_word(m, lo, hi, n, "up", "down", min_effect=0.0),
        change if len(change) else None,
        "organisms",
    )  # activations, not a rate

    caft = effect(trained("zero", directions))
    for q, mode in (("c", "detached"), ("d", "grad_only")):
        part = effect(trained(mode, directions))
        m, lo, hi, n = _interval(part - caft)
        pm, plo, phi, pn = _interval(part)
        helps = _sign_word(pm, plo, phi, pn, "helps", "hurts", "no measurable effect")
        versus = _sign_word(m, lo, hi, n, "more", "less")
        verdict = (
            "not measured"
            if pn == 0
            else "recovers it (no measurable difference from CAFT)"
            if n > 1 and helps == "helps" and versus == "no measurable difference"
            else f"{helps}; vs CAFT: {versus}"
        )
        add(q, verdict, part - caft)

    steer = ood[ood["trained"] & (ood["method"] == "steer_mean") & (ood["directions"] == directions)]
    ks = sorted(steer["param"].unique(), key=lambda p: float(str(p).split("=")[-1]))
    if ks:
        effects = {k: effect(trained("steer_mean", directions, k)) for k in ks}
        best = max(ks, key=lambda k: effects[k].mean())
        helping = [k for k in ks if _sign_word(*_interval(effects[k]), "helps", "hurts") == "helps"]
        m, lo, hi, n = _interval(effects[best] - caft)
        add(
            "e",
            f"helps at {', '.join(helping) or 'no k'}; best {best}: "
            f"{_sign_word(m, lo, hi, n, 'beats CAFT', 'below CAFT', 'on par with CAFT')}",
            effects[best] - caft,
        )
    else:
        add("e", "not measured", None)

    adds = ood[ood["trained"] & (ood["method"] == "add") & (ood["directions"] == directions)][
        "param"
    ].unique()
    if len(adds):
        best = max(adds, key=lambda p: effect(trained("add", directions, p)).mean())
        diff = caft - effect(trained("add", directions, best))
        m, lo, hi, n = _interval(diff)
        add("f", f"CAFT vs add ({best}): {_sign_word(m, lo, hi, n, 'CAFT better', 'add better')}", diff)
    else:
        add("f", "not measured", None)
    return pd.DataFrame(rows, columns=COLUMNS)


def markdown(df: pd.DataFrame) -> str:
    """The answers as a markdown table: question, answer, value [interval] and what it is over."""
    lines = ["| | question | answer | value | [95% interval] | n |", "|---|---|---|---|---|---|"]
    for r in df.itertuples():
        value = "" if r.n == 0 else f"{r.value:+.3f} [{r.low:+.3f}, {r.high:+.3f}]"
        over = (r.over.removesuffix("s") if r.n == 1 else r.over) if r.n else ""
        lines.append(
            f"| {r.question} | {r.text} | {r.answer} | {VALUES[r.question]} | {value} | {r.n} {over} |"
        )
    return "\n".join(lines)
