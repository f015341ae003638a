"""One description per registered method, read off its class: the single source of the method
tables in ``taskbalance methods``, the README and the documentation site.

>>> from taskbalance.methods.catalog import describe
>>> card = describe("mgda")
>>> card.family, card.needs
('gradient manipulation', 'Gram matrix')
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from taskbalance.engine.needs import Need
from taskbalance.methods.registry import available, get

__all__ = ["MethodCard", "catalog", "describe", "markdown_table"]

_NEEDS_TEXT = {Need.LOSSES: "losses", Need.GRAMIAN: "Gram matrix", Need.JACOBIAN: "Jacobian"}


@dataclass(frozen=True)
class MethodCard:
    """What a user needs to choose a method: its family, cost, scale, paper and defaults."""

    name: str
    qualname: str
    family: str
    needs: str
    scale: str
    reference: str
    defaults: dict[str, Any]
    scale_degree: float | None
    summary: str


def describe(name: str) -> MethodCard:
    """The :class:`MethodCard` of the method registered as ``name``."""
    cls = get(name)
    parameters = inspect.signature(cls).parameters.values()
    defaults = {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}
    required = [
        p
        for p in parameters
        if p.default is inspect.Parameter.empty
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    # the degree may depend on hyperparameters (FairGrad's alpha): the defaults' degree
    degree = cls.homogeneity if required else cls().scale_degree()
    doc = inspect.getdoc(cls) or ""
    return MethodCard(
        name=cls.name,
        qualname=f"{cls.__module__}.{cls.__qualname__}",
        family=cls.family,
        needs=cls.needs_note or _NEEDS_TEXT[cls.needs],
        scale=cls.scale,
        reference=cls.reference,
        defaults=defaults,
        scale_degree=degree,
        summary=doc.split("\n\n", 1)[0].replace("\n", " "),
    )


def catalog() -> list[MethodCard]:
    """Every registered method's card, sorted by family (loss weighting first), then name."""
    cards = [describe(name) for name in available()]
    return sorted(cards, key=lambda card: (card.family != "loss weighting", card.name))


def markdown_table(link: str | None = None) -> str:
    """The method table in Markdown, one line per method.

    ``link`` (e.g. ``"methods/{name}.md"``) turns each name into a link to its page.
    """
    lines = ["| name | family | needs | scale | reference |", "|---|---|---|---|---|"]
    for card in catalog():
        name = f"`{card.name}`"
        if link is not None:
            name = f"[{name}]({link.format(name=card.name)})"
        cells = [name, card.family, card.needs, card.scale, card.reference]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)
