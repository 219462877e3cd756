"""The robustness protocol, versioned: every parameter fixed, named and recorded.

Threat model: L∞ perturbations of the *query* images in [0,1] pixel space, the gallery clean
and known to the attacker; headline ε = 8/255, and the paper's ε = 5/255 where the version
says so. The attacks run as a cascade (:mod:`.cascade`): each runs only on the queries whose AP
is still above their chance AP, and a query's robust AP is the lowest AP any attack reached
(or its clean AP: δ = 0 is in the threat model).

The cascade, in order (:class:`AttackStep`):

1. ``apgd-metric``: APGD on the paper's metric loss (mean distance to the true matches), 100
   iterations, ``restarts`` random starts;
2. ``apgd-margin-t``: APGD on the targeted ranking margin toward each of the ``targets``
   hardest negative identities (one run per target);
3. ``apgd-self``: APGD pushing each query's features away from its own clean features (no
   gallery knowledge), ``restarts`` random starts;
4. ``square``: Square attack on the ranking margin, forward passes only.

Versions: ``standard`` (2 restarts, 3 target identities, 5,000 Square queries, ε 8 and 5),
``fast`` (2 restarts, 1 target identity, 1,000 Square queries, ε 8; it had 1 restart until the
convergence check found one start of APGD on the ``self`` and metric losses short of converged:
``benchmarks/RESULTS.md``, "Convergence of the fast protocol") and ``smoke`` (the same cascade,
ε and checks with budgets too small for a robustness number: 5 APGD iterations, 20 Square queries;
it checks that an evaluation runs end to end, e.g. in the tests' benchmark config). The checks
of :mod:`.flags` use the reference attacks at every ε of the version (:data:`REFERENCE_METHODS`: the
paper's FGSM, I-FGSM and MI-FGSM with its step rule, and PGD), an ε sweep of ``apgd-metric`` and, for the
convergence check, the starts of every APGD attack doubled (one more start per start, per target
identity of ``apgd-margin-t``).

The gallery-side figure (:class:`GallerySide`, :mod:`.gallery`), reported beside the headline and
never mixed into it: the paper's threat model (Bai et al. attack the gallery), the gallery images
perturbed at the headline ε by APGD on the paper's metric loss, every query clean. ``standard``
attacks every gallery image the paper's loss moves; ``fast`` only those in the clean top 20 of a
query of their identity (cheaper; with fewer images attacked, expect its mAP at or above the full one's).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..config import StrictModel
from ..registry import Registry

Objective = Literal["metric", "margin-targeted", "self", "margin"]

REFERENCE_METHODS = ("fgsm", "ifgsm", "mifgsm", "pgd")
"""The never-weaker check's attacks: the paper's three (FGSM, I-FGSM, MI-FGSM; its defaults: α = 1,
μ = 1, min(ε + 4, 1.25 ε) iterations) and PGD, each on the metric loss at the same ε."""


class AttackStep(StrictModel):
    """One attack of the cascade.

    Attributes:
        name: its name in tables (``apgd-metric``, ...).
        method: ``apgd`` or ``square``.
        objective: ``metric`` (mean distance to the true matches), ``margin-targeted`` (ranking margin
            toward a hard negative identity), ``self`` (distance to the query's own clean features),
            ``margin`` (ranking margin to every non-match).
        steps: APGD iterations, or Square's iterations (queries after the first).
        runs: random starts (APGD), or target identities (``margin-targeted``: one start each); 1 for Square.
    """

    name: str
    method: Literal["apgd", "square"]
    objective: Objective
    steps: int = Field(ge=1)
    runs: int = Field(default=1, ge=1)


class GallerySide(StrictModel):
    """The gallery-side figure: APGD (``steps`` iterations, one start) on the ``gallery`` threat model's
    metric loss (each gallery image of an identity with a query pushed away from that identity's
    queries, the paper's non-targeted attack), at the headline ε, every query clean.

    Attributes:
        steps: APGD iterations.
        top_k: the budget: attack only the gallery images in the clean top ``top_k`` of the ranking of a
            query of their identity (None: every gallery image the loss moves).
        reference_methods: attacks of the same images the figure must not be weaker than (default the
            paper's three: FGSM, I-FGSM, MI-FGSM with its step rule), a ``gallery-never-weaker`` check.
    """

    steps: int = Field(ge=1)
    top_k: int | None = Field(default=None, ge=1)
    reference_methods: list[str] = Field(default_factory=lambda: list(REFERENCE_METHODS[:3]))


class Protocol(StrictModel):
    """A version of the protocol (see the module docstring); ε in 0..255 units."""

    version: str
    epsilons: list[float] = Field(description="robust mAP is measured at each; the first is the headline")
    cascade: list[AttackStep]
    reference_methods: list[str] = Field(description="attacks robust mAP must not be weaker than at each ε (never-weaker check)")
    sweep_epsilons: list[float] = Field(description="ε of the sweep check (apgd-metric, sweep_steps iterations, one start)")
    sweep_steps: int = Field(ge=1)
    eot: int = Field(ge=1, description="gradient samples per APGD step when the model's features are random")
    gallery: GallerySide | None = Field(default=None, description="the gallery-side figure, reported separately (None: not measured)")
    seed: int = 0
    bootstrap_resamples: int = 1000
    confidence: float = 0.95

    def step(self, name: str) -> AttackStep:
        """The cascade step called ``name``."""
        return next(s for s in self.cascade if s.name == name)


def _cascade(restarts: int, targets: int, square_queries: int) -> list[AttackStep]:
    return [
        AttackStep(name="apgd-metric", method="apgd", objective="metric", steps=100, runs=restarts),
        AttackStep(name="apgd-margin-t", method="apgd", objective="margin-targeted", steps=100, runs=targets),
        AttackStep(name="apgd-self", method="apgd", objective="self", steps=100, runs=restarts),
        AttackStep(name="square", method="square", objective="margin", steps=square_queries, runs=1),
    ]


VERSIONS: Registry[Protocol] = Registry("robustness protocol version")
"""Version name → :class:`Protocol`."""
VERSIONS.register(
    "standard",
    Protocol(
        version="standard",
        epsilons=[8, 5],
        cascade=_cascade(restarts=2, targets=3, square_queries=5000),
        reference_methods=list(REFERENCE_METHODS),
        sweep_epsilons=[2, 4, 8, 16, 32, 64],
        sweep_steps=100,
        eot=20,
        gallery=GallerySide(steps=100),
    ),
)
VERSIONS.register(
    "fast",
    Protocol(
        version="fast",
        epsilons=[8],
        cascade=_cascade(restarts=2, targets=1, square_queries=1000),
        reference_methods=list(REFERENCE_METHODS),
        sweep_epsilons=[2, 8, 32, 64],
        sweep_steps=25,
        eot=20,
        gallery=GallerySide(steps=100, top_k=20),
    ),
)
VERSIONS.register(
    "smoke",
    Protocol(
        version="smoke",
        epsilons=[8, 5],
        cascade=[
            AttackStep(name="apgd-metric", method="apgd", objective="metric", steps=5),
            AttackStep(name="apgd-margin-t", method="apgd", objective="margin-targeted", steps=5),
            AttackStep(name="apgd-self", method="apgd", objective="self", steps=5),
            AttackStep(name="square", method="square", objective="margin", steps=20),
        ],
        reference_methods=list(REFERENCE_METHODS),
        sweep_epsilons=[8, 64],
        sweep_steps=3,
        eot=4,
        gallery=GallerySide(steps=5),
    ),
)
