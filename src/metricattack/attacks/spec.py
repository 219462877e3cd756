"""What an attack is: :class:`AttackSpec` = the common fields + the method's own options.

Common fields: ``method`` (a :data:`~.methods.METHODS` name), ``eps`` (L∞ radius in 0..255
pixel units), ``seed`` (per-image randomness and the targeted threat model's targets) and
``objective`` (which of the threat model's objectives is attacked; None: its first). Every
other key is an option of the method, validated against that method's ``Options`` schema and
resolved against ε (the paper's defaults filled in: α = min(1, ε), n = ⌊min(ε + 4, 1.25 ε)⌋,
μ = 1, PGD's random start on). In YAML, options sit beside the common fields or under
``options:``::

    attack: {method: mifgsm, eps: 5, mu: 0.5}
    attack: {method: mifgsm, eps: 5, options: {mu: 0.5}}     # the same spec

``spec.resolved()`` (``{"method", "eps", "seed", "objective", "options": {...}}``, every
default filled) is what stage keys, manifests, ``attack_results.json``, results.json and the
printed summaries record.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, Field, SerializeAsAny, ValidationError, model_validator

from ..config import StrictModel, validate
from ..errors import ConfigError
from .methods import METHODS, AttackMethod, MethodOptions
from .methods.base import refuse_bool_confusion

MethodName = Annotated[str, AfterValidator(METHODS.check)]
"""A pydantic field type: the name of a registered attack method."""


def method_options(method: str, values: dict[str, Any] | MethodOptions | None = None, eps: float | None = None) -> MethodOptions:
    """``values`` validated against ``method``'s options schema (resolved when ``eps`` is given).

    Raises ValueError naming every bad option (unknown ones with the method's option names).
    """
    schema = METHODS.get(method).Options
    if isinstance(values, MethodOptions):
        values = values.model_dump(exclude_unset=True)
    try:
        options = schema.model_validate(values or {})
    except ValidationError as exc:
        names = ", ".join(schema.model_fields) or "none"
        problems = []
        for err in exc.errors():
            key = ".".join(str(part) for part in err["loc"])
            if err["type"] == "extra_forbidden":
                problems.append(f"{method} has no option {key!r} (its options: {names})")
            elif key:
                problems.append(f"{method} option {key}: {err['msg']}")
            else:
                problems.append(f"{method} options: {err['msg'].removeprefix('Value error, ')}")
        raise ValueError("; ".join(problems)) from None
    return options if eps is None else options.resolve(eps)


class AttackSpec(StrictModel):
    """One attack: common fields + the method's resolved options (module docstring).

    Attributes:
        method: a :data:`METHODS` name: ``fgsm`` (Eq. 5), ``ifgsm`` (Eq. 6), ``mifgsm`` (Eq. 7), ``pgd``, ...
        eps: L∞ radius ε in 0..255 units, ``0 < ε ≤ 255``.
        seed: seeds the per-image randomness (PGD's start, ...) and the targeted threat model's targets.
        objective: the threat model's objective to attack (None: its default, the first it lists).
        options: the method's options, resolved against ε (an instance of ``METHODS.get(method).Options``).
    """

    method: MethodName = "ifgsm"
    eps: float = Field(default=5.0, gt=0, le=255, allow_inf_nan=False)
    seed: int = 0
    objective: str | None = None
    options: SerializeAsAny[MethodOptions] = MethodOptions()

    @model_validator(mode="before")
    @classmethod
    def _gather_options(cls, data: Any) -> Any:
        """Move the keys that are not common fields into ``options`` and validate them against the method."""
        if not isinstance(data, dict):
            return data
        refuse_bool_confusion(cls, data)
        common = {k: v for k, v in data.items() if k in cls.model_fields and k != "options"}
        loose = {k: v for k, v in data.items() if k not in cls.model_fields}
        nested = data.get("options") or {}
        if isinstance(nested, MethodOptions):
            nested = nested.model_dump(exclude_unset=True)
        if not isinstance(nested, dict):
            raise ValueError(f"options must be a mapping of the method's options, got {type(nested).__name__}")
        twice = sorted(set(loose) & set(nested))
        if twice:
            raise ValueError(f"option {twice[0]!r} is given both beside the common fields and under options")
        method = common.get("method", cls.model_fields["method"].default)
        if not isinstance(method, str) or method not in METHODS:
            return common  # the method field reports the unknown name
        return {**common, "options": method_options(method, {**nested, **loose})}

    @model_validator(mode="after")
    def _resolve(self) -> AttackSpec:
        """Fill the options' ε-dependent defaults (α, steps) and check them against the validated ε."""
        if not isinstance(self.options, METHODS.get(self.method).Options):
            raise ValueError(f"options of {self.method} must be its own options ({METHODS.get(self.method).Options.__name__})")
        object.__setattr__(self, "options", self.options.resolve(self.eps))  # frozen model: set once, while validating
        return self

    def build(self) -> AttackMethod[Any]:
        """The method object that runs this spec."""
        return METHODS.get(self.method)(self.options)

    @property
    def label(self) -> str:
        """The method's name in tables (``I-FGSM``; the registry name when it has none)."""
        return METHODS.get(self.method).label or self.method

    def resolved(self) -> dict[str, Any]:
        """JSON-able record with every default filled (stage keys, manifests, results)."""
        return self.model_dump(mode="json")

    def options_text(self) -> str:
        """``alpha=1 steps=6`` (the resolved options, for summaries); ``(no options)`` when there are none."""
        values = self.options.model_dump(mode="json")
        return " ".join(f"{k}={_short(v)}" for k, v in values.items()) or "(no options)"


def _short(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def describe(record: dict[str, Any]) -> str:
    """One line for a recorded spec (:meth:`AttackSpec.resolved`): ``ifgsm eps=5 seed=0 alpha=1 steps=6``."""
    options = " ".join(f"{k}={_short(v)}" for k, v in (record.get("options") or {}).items())
    objective = f" objective={record['objective']}" if record.get("objective") else ""
    return f"{record['method']} eps={_short(record['eps'])} seed={record['seed']}{objective} {options}".rstrip()


def check_option_table(table: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Validate per-method options ``{method: {option: value}}`` (configs that attack with several
    methods and ε); ε-dependent checks wait for :func:`spec_from_table`. ValueError naming the culprit."""
    for method, values in table.items():
        if not isinstance(values, dict):
            raise ValueError(f"options of {method} must be a mapping of its options, got {type(values).__name__}")
        method_options(method, values)
    return table


MethodOptionTable = Annotated[dict[MethodName, dict[str, Any]], AfterValidator(check_option_table)]
"""A pydantic field type: ``{method name: {option: value}}``, each checked against that method's schema."""

MOVED_OPTIONS = ("alpha", "steps", "mu", "random_start")


def refuse_moved_options(data: Any, where: str) -> Any:
    """A before-validator's check: method options written beside a list of methods (the schema before
    per-method options) are refused with where they go now."""
    if isinstance(data, dict):
        moved = [k for k in MOVED_OPTIONS if k in data]
        if moved:
            raise ValueError(
                f"{where}.{moved[0]}: method options are given per method now, under {where}.options.<method> "
                f"(e.g. options: {{mifgsm: {{{moved[0]}: {data[moved[0]]}}}}}); the defaults are the paper's (alpha = 1, mu = 1, "
                "steps = min(eps + 4, 1.25 eps))"
            )
    return data


def spec_from_table(
    method: str, eps: float, seed: int, table: dict[str, dict[str, Any]], *, cap_alpha: bool = False, source: str = ""
) -> AttackSpec:
    """The :class:`AttackSpec` of ``method`` at ``eps`` with ``table[method]``'s options (``cap_alpha``:
    an ``alpha`` above ``eps`` becomes ``eps``, for configs that apply one α to several ε)."""
    options = dict(table.get(method, {}))
    if cap_alpha and isinstance(options.get("alpha"), int | float) and options["alpha"] > eps:
        options["alpha"] = eps
    return validate(AttackSpec, {"method": method, "eps": eps, "seed": seed, **options}, source or f"attack {method} at eps {eps:g}")


def check_savable(spec: AttackSpec, option: str = "--eps") -> None:
    """Refuse an ε below one 8-bit step for attacks saved as images (they would equal their source)."""
    if spec.eps < 1:
        raise ConfigError(
            f"{option} {spec.eps:g}: attacked images are saved as 8-bit PNG, where a pixel moves in steps of 1 "
            "(0..255 units), so every saved image would equal its source; use an eps of at least 1"
        )


def make_spec(source: str = "attack options", **values: Any) -> AttackSpec:
    """Build an :class:`AttackSpec` from common fields and method options (None values are left out);
    invalid values raise one ConfigError naming ``source`` and the field."""
    return validate(AttackSpec, {k: v for k, v in values.items() if v is not None}, source)
