"""Which adversarial galleries the selected experiments need (the plan of a run).

An :class:`AttackJob` is one adversarial gallery: attacked models, mode, method, ε and
attack metric. :func:`plan` lists every job and every (job, tested model) feature
extraction the selected experiments read, deduplicated, so each is computed once and
the runner can show one progress bar (with ETA) per stage group.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import BenchmarkConfig, learned_metrics


@dataclass(frozen=True)
class AttackJob:
    sources: tuple[str, ...]
    mode: str  # "nontargeted" | "targeted" | "classification"
    method: str
    epsilon: float
    metric: str

    @property
    def id(self) -> str:
        """Readable unique name, e.g. ``nontargeted-ifgsm-eps5-euclidean-B1``."""
        return f"{self.mode}-{self.method}-eps{self.epsilon:g}-{self.metric}-{'+'.join(self.sources)}"


@dataclass
class Plan:
    jobs: list[AttackJob]
    evaluations: list[tuple[AttackJob, str]]  # (job, tested model)
    learned: list[tuple[str, str]]  # (model, learned metric) fitted on the model's training features
    train_features: list[str]

    def add(self, job: AttackJob, tested: list[str]) -> AttackJob:
        if job not in self.jobs:
            self.jobs.append(job)
        for name in tested:
            if (job, name) not in self.evaluations:
                self.evaluations.append((job, name))
        return job

    def learn(self, model: str, metric: str) -> None:
        """Fit ``metric`` for ``model`` if it is a learned metric."""
        if metric in learned_metrics() and (model, metric) not in self.learned:
            self.learned.append((model, metric))


def single(
    cfg: BenchmarkConfig, model: str, method: str, mode: str = "nontargeted", epsilon: float | None = None, metric: str | None = None
) -> AttackJob:
    """The job attacking one model (defaults: the config's ε and attack metric)."""
    return AttackJob((model,), mode, method, cfg.attack.eps if epsilon is None else epsilon, metric or cfg.attack.metric)


def ensembles(cfg: BenchmarkConfig) -> list[tuple[str, tuple[str, ...]]]:
    """(hold-out, ensemble) pairs for Table 4; empty with fewer than three models."""
    names = cfg.model_names()
    if len(names) < 3:
        return []
    return [(h, tuple(n for n in names if n != h)) for h in names]


def plan(cfg: BenchmarkConfig) -> Plan:
    """Every job and evaluation needed by ``cfg.selected()`` experiments."""
    p = Plan([], [], [], [])
    names = cfg.model_names()
    selected = set(cfg.selected())
    methods = cfg.attack.methods
    if selected & {"table2", "fig3", "table4"}:
        for m in names:
            for method in methods:
                p.add(single(cfg, m, method), names)
    if "table4" in selected:
        for _, members in ensembles(cfg):
            for method in methods:
                p.add(AttackJob(members, "nontargeted", method, cfg.attack.eps, cfg.attack.metric), names)
    if "table5" in selected and cfg.experiments.table5.enabled:
        method = cfg.experiments.table5.settings.method
        for m in names:
            p.add(single(cfg, m, method), names)
    if "classification" in selected:
        m, method = cfg.chosen_model("classification"), cfg.experiments.classification.method
        p.add(single(cfg, m, method), [m])
        p.add(single(cfg, m, method, mode="classification"), [m])
    if "targeted" in selected:
        m, method = cfg.chosen_model("targeted"), cfg.experiments.targeted.method
        p.add(single(cfg, m, method, mode="targeted"), [m])
    if "fig4" in selected:
        m, method = cfg.chosen_model("fig4"), cfg.experiments.fig4.method
        p.add(single(cfg, m, method), [m])
        p.add(single(cfg, m, method, mode="targeted"), [m])
    if "fig1" in selected:
        m = cfg.chosen_model("fig1")
        p.add(single(cfg, m, "ifgsm"), [m])
        p.add(single(cfg, m, "ifgsm", mode="targeted"), [m])
    if "fig5" in selected:
        m = cfg.chosen_model("fig5")
        f5 = cfg.experiments.fig5
        for metric in f5.metrics:
            p.learn(m, metric)
            for method in f5.methods:
                for eps in f5.epsilons:
                    p.add(single(cfg, m, method, epsilon=eps, metric=metric), [m])
    for job in p.jobs:
        for source in job.sources:
            p.learn(source, job.metric)
    p.train_features = list(dict.fromkeys(m for m, _ in p.learned))
    return p
