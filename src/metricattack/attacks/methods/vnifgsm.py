"""VNI-FGSM (Wang & He, CVPR 2021): VMI-FGSM (:mod:`.vmifgsm`) with NI-FGSM's Nesterov look-ahead.

The gradient ĝ is taken at ``p_n = x_n + α·μ·g_n``; the variance samples neighbours of ``x_n``
and subtracts ĝ (the authors' code; torchattacks' ``VNIFGSM`` does the same). Options,
defaults and torchattacks' departures: those of VMI-FGSM.
"""

from __future__ import annotations

from .base import register_method
from .vmifgsm import VMIFGSM


@register_method("vnifgsm")
class VNIFGSM(VMIFGSM):
    label = "VNI-FGSM"
    summary = "VNI-FGSM (Wang & He, CVPR 2021): VMI-FGSM with a Nesterov look-ahead"
    nesterov = True
