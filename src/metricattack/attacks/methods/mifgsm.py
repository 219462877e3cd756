"""MI-FGSM (Dong et al., CVPR 2018; the paper's Eq. 7): I-FGSM on momentum-accumulated gradients.

``g_{n+1} = μ·g_n + ∇L(x_n) / mean|∇L(x_n)|`` with the mean over the pixels of *each image*
(its L1 norm / numel; a zero gradient stays zero), ``x_{n+1} = Ψ(x_n + α·sign(g_{n+1}))``
(:class:`~.iterative.MomentumSignMethod` with its default estimate, the gradient).
"""

from __future__ import annotations

from .base import register_method
from .iterative import MomentumOptions, MomentumSignMethod


@register_method("mifgsm")
class MIFGSM(MomentumSignMethod[MomentumOptions]):
    label = "MI-FGSM"
    summary = "MI-FGSM (Eq. 7): I-FGSM on momentum-accumulated gradients"
    Options = MomentumOptions
