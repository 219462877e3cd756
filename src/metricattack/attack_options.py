"""The commands' attack options: ``--method NAME --eps E [--method-option KEY=VALUE ...] [--objective NAME]
[--seed S] [--threat NAME]``, the same names as :class:`~metricattack.attacks.spec.AttackSpec` and
``MetricAttack(model, method=..., eps=..., seed=..., **options)``.

``--method-option`` takes one option of the chosen method (repeatable; the value is read as YAML,
so ``steps=10``, ``mu=0.5``, ``random_start=false``); each method's options are listed by
``--help`` (:func:`methods_help`) and checked against the method's schema before any work::

    metricattack attack ... --method mifgsm --eps 8 --method-option mu=0.5 --method-option steps=10
"""

from __future__ import annotations

import argparse
from typing import Any

import yaml

from .attacks.methods import METHODS
from .attacks.methods.base import option_lines
from .attacks.spec import AttackSpec, make_spec
from .attacks.threats import THREATS
from .errors import ConfigError


def methods_help() -> str:
    """One line per registered method: its name, summary and options (``--help`` texts)."""
    lines = []
    for name in METHODS:
        cls = METHODS.get(name)
        options = "; ".join(option_lines(cls)) or "no options"
        lines.append(f"{name}: {cls.summary}. Options: {options}")
    return "\n".join(lines)


def add_attack_options(parser: argparse.ArgumentParser, *, threat: bool = True, method: bool = True, eps: float = 5.0) -> None:
    """Add the attack option group: ``--method``, ``--eps``, ``--method-option``, ``--objective``,
    ``--seed`` and (``threat``) ``--threat``, alias ``--setting``. ``method=False`` keeps only
    ``--eps`` and ``--seed`` (a command whose methods are fixed, e.g. ``robustness``); ``eps`` is the default ε."""
    group = parser.add_argument_group(
        "attack",
        "method options go in --method-option KEY=VALUE (repeatable; values read as YAML); every method's options are listed at the end"
        if method
        else None,
    )
    if method:
        group.add_argument("--method", choices=METHODS, default="ifgsm", help="attack method (default ifgsm)")
    group.add_argument("--eps", type=float, default=eps, help=f"L-inf radius in 0..255 pixel units (default {eps:g})")
    if method:
        group.add_argument(
            "--method-option",
            dest="method_options",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="an option of the chosen method (repeatable), e.g. steps=10, mu=0.5, random_start=false",
        )
        group.add_argument("--objective", default=None, help="the threat model's objective to attack (default: its first)")
    group.add_argument(
        "--seed", type=int, default=0, help="seeds the per-image randomness (random starts, Square's squares) and the targeted targets"
    )
    if threat and method:
        group.add_argument(
            "--threat",
            "--setting",
            dest="threat",
            choices=THREATS,
            default="gallery",
            help="threat model (default gallery: non-targeted, the paper's attack)",
        )


def parse_method_options(items: list[str]) -> dict[str, Any]:
    """``["steps=10", "mu=0.5"]`` → ``{"steps": 10, "mu": 0.5}`` (values read as YAML); a key given twice is an error."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--method-option {item!r}: expected KEY=VALUE, e.g. steps=10")
        if key in options:
            raise ConfigError(f"--method-option {key} is given twice")
        try:
            options[key] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"--method-option {item!r}: the value is not valid YAML") from None
    return options


def attack_spec(args: argparse.Namespace) -> AttackSpec:
    """The :class:`AttackSpec` of the parsed attack options (one ConfigError naming every bad value)."""
    options = parse_method_options(args.method_options)
    clash = sorted(set(options) & set(AttackSpec.model_fields))
    if clash:
        raise ConfigError(f"--method-option {clash[0]}: {clash[0]} is not a method option; use --{clash[0]}")
    return make_spec(
        f"attack options (--method {args.method} --method-option ...)",
        method=args.method,
        eps=args.eps,
        seed=args.seed,
        objective=args.objective,
        **options,
    )
