"""One palette for every figure: each configuration (``method · directions``) has one colour, one
marker, one group and one place in the order, so ``zero · pca`` looks the same everywhere.

Colours are the Okabe–Ito palette (colour-blind safe) and a grey; within a group every member has
its own colour, and each group has its own marker, so no two configurations share both colour and
marker (:meth:`Palette.add` refuses a duplicate label or pair). Groups, in order: the references
(``base``, ``plain``), the CAFT sets (``zero`` on interpreted directions, the oracle as the upper
bound), the controls (top-k, non-interpretive and random sets), the baselines (fewer examples, KL
to base, data-side references) and the steering family on the chosen directions.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

#: the Okabe–Ito palette (Okabe & Ito 2008), by name, and a neutral grey
OKABE_ITO = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky blue": "#56B4E9",
    "bluish green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish purple": "#CC79A7",
}
GREY = "#999999"
COLOUR_BLIND_SAFE = (*OKABE_ITO.values(), GREY)
#: the groups of configurations, in the order figures show them, each with its marker and bar pattern
GROUPS = {
    "reference": ("star", ""),
    "CAFT sets": ("circle", ""),
    "controls": ("x", "/"),
    "baselines": ("square", "."),
    "steering family": ("diamond", "x"),
    "other": ("triangle-up", "-"),
}
#: the method names of the reference and baseline rows, which take no ``· directions`` in their label
PLAIN_METHODS = ("base", "plain", "fewer_examples", "kl_to_base", "mix_disambiguating")


def faded(colour: str, alpha: float = 0.45) -> str:
    """``colour`` (``#rrggbb``) as ``rgba`` with opacity ``alpha`` (interval bars behind the points)."""
    r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r}, {g}, {b}, {alpha})"


def config_label(method: str, directions: str | None) -> str:
    """``method · directions``, or the method alone where it has no directions."""
    none = directions in ("none", "", None) or method in PLAIN_METHODS
    return method if none else f"{method} · {directions}"


@dataclass(frozen=True)
class Style:
    """How one configuration is drawn."""

    label: str
    colour: str
    marker: str
    pattern: str  # of a bar
    group: str


class Palette:
    """A registry of :class:`Style` by label, in registration order; unknown labels get a stable
    colour of the palette, the ``other`` group's marker and a place after every known one."""

    def __init__(self) -> None:
        self._styles: dict[str, Style] = {}

    def add(self, label: str, colour: str, group: str) -> Style:
        if label in self._styles:
            raise ValueError(f"configuration {label!r} is already in the palette")
        if group not in GROUPS:
            raise ValueError(f"group {group!r} of {label!r} is unknown; valid: {', '.join(GROUPS)}")
        if colour not in COLOUR_BLIND_SAFE:
            raise ValueError(
                f"colour {colour!r} of {label!r} is not colour-blind safe; "
                f"valid: {', '.join(COLOUR_BLIND_SAFE)}"
            )
        style = Style(label, colour, *GROUPS[group], group)
        clash = [
            s.label
            for s in self._styles.values()
            if s.colour == colour and (s.marker == style.marker or s.pattern == style.pattern)
        ]
        if clash:
            raise ValueError(
                f"{label!r} would look like {clash[0]!r} (colour {colour} and the same "
                "marker or bar pattern); choose another colour"
            )
        self._styles[label] = style
        return style

    def __iter__(self):
        return iter(self._styles.values())

    def style(self, label: str) -> Style:
        """The style of ``label`` (``none``, no intervention, is the base model's)."""
        if label == "none":
            label = "base"
        if label in self._styles:
            return self._styles[label]
        colour = COLOUR_BLIND_SAFE[zlib.crc32(label.encode()) % len(COLOUR_BLIND_SAFE)]
        return Style(label, colour, *GROUPS["other"], "other")

    def order(self, labels) -> list[str]:
        """``labels`` without repeats, by group, then registration order, then name."""
        known = list(self._styles)
        groups = list(GROUPS)

        def key(label: str) -> tuple[int, int, str]:
            place = known.index(label) if label in known else len(known)
            return groups.index(self.style(label).group), place, label

        return sorted(dict.fromkeys(labels), key=key)


def _default() -> Palette:
    p, c = Palette(), OKABE_ITO
    for label, colour, group in [
        ("base", GREY, "reference"),
        ("plain", c["black"], "reference"),
        ("zero · pca", c["blue"], "CAFT sets"),
        ("zero · sae", c["vermillion"], "CAFT sets"),
        ("zero · persona_vector", c["reddish purple"], "CAFT sets"),
        ("zero · diff_means", c["orange"], "CAFT sets"),
        ("zero · oracle", c["bluish green"], "CAFT sets"),
        ("zero · oracle_pca", c["sky blue"], "CAFT sets"),
        ("zero · topk_pca", c["blue"], "controls"),
        ("zero · noninterp_pca", c["sky blue"], "controls"),
        ("zero · random", c["black"], "controls"),
        ("zero · topk_sae", c["vermillion"], "controls"),
        ("zero · random_sae", c["orange"], "controls"),
        ("fewer_examples", c["orange"], "baselines"),
        ("kl_to_base", c["reddish purple"], "baselines"),
        ("mix_disambiguating", c["bluish green"], "baselines"),
        ("filter_projection · pca", c["sky blue"], "baselines"),
        ("mean · pca", c["sky blue"], "steering family"),
        ("detached · pca", c["orange"], "steering family"),
        ("grad_only · pca", c["bluish green"], "steering family"),
        ("steer_mean · pca", c["reddish purple"], "steering family"),
        ("add · pca", c["vermillion"], "steering family"),
        ("add · persona_vector", c["black"], "steering family"),
    ]:
        p.add(label, colour, group)
    return p


#: the palette every figure uses
PALETTE = _default()
