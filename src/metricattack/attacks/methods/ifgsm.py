"""I-FGSM (Kurakin et al.; the paper's Eq. 6): ``x_{n+1} = Ψ(x_n + α·sign(∇L(x_n)))`` from the clean images."""

from __future__ import annotations

from .base import register_method
from .iterative import IterativeOptions, IterativeSignMethod


@register_method("ifgsm")
class IFGSM(IterativeSignMethod[IterativeOptions]):
    label = "I-FGSM"
    summary = "I-FGSM (Eq. 6): n steps of size α, projected on the ε-ball"
    Options = IterativeOptions
