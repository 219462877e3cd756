"""Adversarial metric defenses (the paper's Sec. 4 and the methods after it) and their honest evaluation.

* :mod:`.config` -- :class:`~.config.DefenseConfig` (``metricattack defend``; the benchmark's
  Table 5 and defense leaderboard embed its sections);
* :mod:`.methods` -- the registry :data:`~.methods.DEFENSES` of defense methods, one module each
  (``metric-preserving``, ``online``, ``pgd-at``, ``act``, ``hm``, ``goat``);
* :mod:`.training` -- :func:`~.training.train_defended`, the trainer's run with a method's batch objective;
* :mod:`.training_set_attack` -- Y_adv (training set attacked against F) and the merged set Y ∪ Y_adv;
* :mod:`.evaluation` -- Table 5 cells, white-box (adaptive) attack rows and the robust evaluation;
* :mod:`.pipeline` -- :func:`~.pipeline.run_defense`, the staged, resumable pipeline.
"""
