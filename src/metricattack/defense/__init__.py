"""Adversarial metric defense (paper Sec. 4) and its honest evaluation.

* :mod:`.config` -- :class:`~.config.DefenseConfig` (``metricattack defend``; Table 5 inside
  ``metricattack benchmark`` embeds its sections);
* :mod:`.training_set_attack` -- Y_adv (training set attacked against F) and the merged set Y ∪ Y_adv;
* :mod:`.online` -- online adversarial training and the fine-tuning loop;
* :mod:`.evaluation` -- Table 5 cells and white-box (adaptive) attack rows;
* :mod:`.metric_preserving` -- :func:`~.metric_preserving.run_defense`, the staged, resumable pipeline.
"""
