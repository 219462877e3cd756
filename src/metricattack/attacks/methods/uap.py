"""``uap``: add a universal perturbation trained by ``metricattack universal`` (:mod:`..universal`).

The method reads one δ file (option ``file``) and adds the same δ, resized to each image's size
(:func:`~metricattack.attacks.universal.apply_delta`), to every image the threat model selects: no
forward or backward pass at attack time (``uses_model = False``). The file is read and checked
when the options are resolved (before any output): its ε must be the attack's ε (a δ is never
rescaled), and its SHA-256 is recorded with the options (stage keys, manifests, results).

δ is trained to push features apart (a non-targeted objective), so threat models that pull
images toward references (``targeted``, ``opposite``) or attack a classifier are refused: the
threat model only picks the split and the images; the objective was fixed at training.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import Field

from ...io import sha256_file
from ..problem import AttackProblem
from ..universal import apply_delta, load_delta, save_delta
from .base import AttackMethod, MethodOptions, register_method

if TYPE_CHECKING:
    from ..threats.base import ThreatModel


class UAPOptions(MethodOptions):
    file: str = Field(description="the universal perturbation (uap.safetensors) written by metricattack universal")
    sha256: str | None = Field(default=None, description="the file's SHA-256 (filled in when the file is read; given: checked)")

    def resolve(self, eps: float) -> UAPOptions:
        path = Path(self.file).expanduser().resolve()
        try:
            _, trained = load_delta(path)
        except Exception as exc:  # MetricAttackError names the file; a ValueError reaches the spec's message
            raise ValueError(str(exc)) from None
        if abs(trained - float(eps)) > 1e-9:
            raise ValueError(
                f"{path} was trained at eps {trained:g}, the attack's eps is {eps:g}: attack with eps {trained:g} (a delta is never rescaled)"
            )
        digest = sha256_file(path)
        if self.sha256 is not None and self.sha256 != digest:
            raise ValueError(f"{path} has SHA-256 {digest}, not the recorded {self.sha256}: the file changed")
        return self.model_copy(update={"file": str(path), "sha256": digest})


@register_method("uap")
class UAP(AttackMethod[UAPOptions]):
    label = "UAP"
    summary = "universal perturbation: add one delta trained on the training split (metricattack universal)"
    Options = UAPOptions
    uses_gradient = False
    uses_model = False

    @classmethod
    def quick(cls, folder: Path, eps: float) -> dict[str, Any]:
        """A seeded random δ (8×4, within ε) for the contract tests: they check the contract, not its strength."""
        path = Path(folder) / f"uap-quick-eps{eps:g}.safetensors"
        if not path.is_file():
            gen = torch.Generator().manual_seed(0)
            save_delta(path, (torch.rand((3, 8, 4), generator=gen) * 2 - 1) * eps / 255.0, eps)
        return {"file": str(path)}

    def refusal(self, threat: ThreatModel) -> str | None:
        if threat.minimise or threat.needs_classifier:
            return (
                f"attack method uap adds a delta trained to push features apart; the {threat.name} threat model "
                f"{'pulls images toward references' if threat.minimise else 'attacks a classifier'}, which one fixed delta does not do"
            )
        return None

    def run(self, problem: AttackProblem) -> torch.Tensor:
        delta, _ = load_delta(self.options.file)
        return torch.where(problem.mask.bool(), apply_delta(problem.images, delta), problem.images)
