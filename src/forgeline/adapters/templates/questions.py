"""A template's ``copier.yml``, parsed once into frozen, typed questions, and the checks
that turn caller-given variables into answers before copier writes anything.

Copier itself validates answers too, but one at a time and only while it renders; doing it
here first lets forgeline name *every* bad variable at once (the API's 422) and keeps the
destination untouched. The rules follow copier's own: the same types and casts, choices,
``validator`` templates rendered in a sandbox with copier's default filters, ``when``
conditions, and defaults that may be Jinja expressions over earlier answers.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml
from jinja2 import TemplateError as JinjaTemplateError
from jinja2.sandbox import SandboxedEnvironment

from forgeline.adapters.templates import escaping
from forgeline.domain.errors import TemplateError
from forgeline.ports.templates import TemplateInfo, TemplateVariable

#: The file copier reads a template's questions and settings from (``.yaml`` also works).
CONFIG_NAMES: Final = ("copier.yml", "copier.yaml")
#: Copier's default answers file; every built-in template records its answers there.
ANSWERS_FILE: Final = ".copier-answers.yml"
#: Settings that make copier run code on the machine; forgeline renders templates with
#: ``unsafe=False`` so copier would refuse them anyway, but saying so at listing time is
#: clearer than a failure half-way through creating a project.
UNSAFE_SETTINGS: Final = ("tasks", "migrations", "jinja_extensions")
#: Copier's default Jinja extensions (``regex_search``, ``to_nice_yaml`` …): validators
#: must see the same filters here as in copier or the two checks would disagree.
_COPIER_EXTENSIONS: Final = ("jinja2_ansible_filters.AnsibleCoreFiltersExtension",)
#: What a rendered file cannot carry as text: control characters but tab and line feed (XML
#: cannot hold most of them even escaped, terminals and editors act on them) and lone
#: surrogates (UTF-8 cannot encode them). Refused in every string answer, whichever file it
#: lands in; answers re-read from a project's answers file, which the agent may edit, too.
_UNWRITABLE: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
_TYPES: Final = frozenset({"str", "int", "float", "bool", "json", "yaml", "path"})
_TRUE: Final = frozenset({"y", "yes", "t", "true", "on", "1"})
_FALSE: Final = frozenset({"n", "no", "f", "false", "off", "0", ""})


class _Missing:
    """Marks a question without a default (copier's ``MISSING``)."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()


@dataclass(frozen=True, slots=True)
class Question:
    """One question of ``copier.yml``, as copier would ask it."""

    name: str
    type: str
    help: str | None
    default: Any
    choices: tuple[tuple[str, Any], ...]
    validator: str
    when: str | bool
    secret: bool

    @property
    def hidden(self) -> bool:
        """``when: false``: a value the template derives itself, never asked or listed."""
        return self.when is False

    def to_variable(self) -> TemplateVariable:
        """The port's view of this question."""
        return TemplateVariable(
            name=self.name,
            type=self.type,
            help=self.help,
            default=None if self.default is MISSING else self.default,
            required=self.default is MISSING,
            choices=tuple(value for _, value in self.choices),
            secret=self.secret,
        )


@dataclass(frozen=True, slots=True)
class TemplateSpec:
    """A template folder: its metadata and its questions, read once."""

    name: str
    path: Path
    source: str
    description: str
    deploy_url: str | None
    secrets: tuple[str, ...]
    questions: tuple[Question, ...]
    unsafe_features: tuple[str, ...]

    def info(self) -> TemplateInfo:
        """The port's view of this template."""
        return TemplateInfo(
            name=self.name,
            description=self.description,
            variables=tuple(q.to_variable() for q in self.questions if not q.hidden),
            source=self.source,
            deploy_url=self.deploy_url,
            secrets=self.secrets,
        )


def config_file(folder: Path) -> Path | None:
    """The ``copier.yml`` of ``folder``, if it is a template."""
    for name in CONFIG_NAMES:
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None


def load_spec(folder: Path, *, source: str) -> TemplateSpec:
    """Parse the template in ``folder``; ``TemplateError`` when its ``copier.yml`` is broken."""
    name = folder.name
    conf = config_file(folder)
    if conf is None:
        raise TemplateError(name, f"no copier.yml in {folder}")
    # Copier's own loader, so `!include` and multi-document files read exactly as copier
    # reads them when it renders: listing and rendering can never disagree.
    from copier._template import filter_config, load_template_config

    try:
        raw = load_template_config(conf, quiet=True)
    except Exception as exc:  # copier raises ValueError, OSError or its own errors here
        raise TemplateError(name, f"cannot read {conf.name}: {exc}") from exc
    settings, questions_raw = filter_config(raw)
    meta = settings.get("forgeline") or {}
    if not isinstance(meta, Mapping):
        raise TemplateError(name, "_forgeline must be a mapping")
    secret_names = set(settings.get("secret_questions") or ())
    questions = tuple(
        _question(name, key, value, secret=key in secret_names)
        for key, value in questions_raw.items()
    )
    secrets = meta.get("secrets") or ()
    return TemplateSpec(
        name=name,
        path=folder,
        source=source,
        description=str(meta.get("description") or settings.get("message_before_copy") or ""),
        deploy_url=str(meta["deploy_url"]) if meta.get("deploy_url") else None,
        secrets=tuple(str(s) for s in secrets),
        questions=questions,
        unsafe_features=tuple(k for k in UNSAFE_SETTINGS if settings.get(k)),
    )


def _question(template: str, key: str, raw: Mapping[str, Any], *, secret: bool) -> Question:
    default = raw.get("default", MISSING)
    qtype = raw.get("type") or _type_of(default)
    if qtype not in _TYPES:
        raise TemplateError(template, f"question {key!r} has unsupported type {qtype!r}")
    raw_choices = raw.get("choices") or ()
    if isinstance(raw_choices, Mapping):
        choices = tuple((str(label), value) for label, value in raw_choices.items())
    elif isinstance(raw_choices, list | tuple):
        # Copier accepts plain values and [label, value] pairs.
        choices = tuple(
            (str(item[0]), item[1])
            if isinstance(item, list | tuple) and len(item) == 2
            else (str(item), item)
            for item in raw_choices
        )
    else:
        raise TemplateError(template, f"question {key!r}: templated choices are not supported")
    help_text = raw.get("help")
    return Question(
        name=key,
        type=qtype,
        help=str(help_text).strip() if help_text else None,
        default=default,
        choices=choices,
        validator=str(raw.get("validator") or ""),
        when=raw.get("when", True),
        secret=bool(raw.get("secret", False)) or secret,
    )


def _type_of(default: Any) -> str:
    # Copier infers the type from the default's Python type, falling back to yaml.
    name = type(default).__name__
    return name if name in _TYPES else "yaml"


def sandbox() -> SandboxedEnvironment:
    """The Jinja environment validators, defaults and conditions are rendered in."""
    env = SandboxedEnvironment(extensions=list(_COPIER_EXTENSIONS))
    env.filters.update(escaping.FILTERS)
    return env


def _render(env: SandboxedEnvironment, source: str, context: Mapping[str, Any]) -> str:
    return env.from_string(source).render(**context)


def _to_str(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError("expected a string")
    text = str(value)
    if found := _UNWRITABLE.search(text):
        raise ValueError(
            "must not contain control characters other than tab and line feed, nor lone "
            f"surrogates (found {found.group()!r} at position {found.start()})"
        )
    return text


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError("expected a boolean (true/false)")


def _to_int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ValueError("expected an integer")


def _to_float(value: Any) -> float:
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None or not math.isfinite(number):
        raise ValueError("expected a finite number")
    return number


def _to_json(value: Any) -> Any:
    if not isinstance(value, str):
        return value  # already structured (an API caller's JSON body)
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc.msg}") from None


def _to_yaml(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        raise ValueError("invalid YAML") from None


_CASTS: Final[Mapping[str, Callable[[Any], Any]]] = {
    "str": _to_str,
    "path": _to_str,
    "bool": _to_bool,
    "int": _to_int,
    "float": _to_float,
    "json": _to_json,
    "yaml": _to_yaml,
}


def cast(qtype: str, value: Any) -> Any:
    """``value`` as the question type wants it; ``ValueError`` with a reason otherwise.

    Strings are accepted for every type (a CLI's ``--var key=value`` gives strings), as
    copier accepts them from its prompt.
    """
    return _CASTS[qtype](value)


class _ProblemError(Exception):
    """Why one variable is bad; ``consequential`` when it only follows from another."""

    def __init__(self, reason: str, *, consequential: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.consequential = consequential


def resolve_answers(
    spec: TemplateSpec, variables: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Cast, default and validate ``variables`` against ``spec``'s questions.

    Returns ``(answers, problems)``: the answers copier will be given (every asked question,
    in order) and, per bad variable, why it is bad. Unknown variables are problems too, so
    a typo is reported rather than silently ignored.
    """
    env = sandbox()
    answers: dict[str, Any] = {}
    problems: dict[str, str] = {}
    known = {q.name for q in spec.questions if not q.hidden}
    for unknown in sorted(set(variables) - known):
        problems[unknown] = "not a variable of this template"
    failed = False
    for question in spec.questions:
        if not _is_asked(env, question, answers, spec.name):
            continue
        try:
            answers[question.name] = _answer(env, spec.name, question, variables, answers)
        except _ProblemError as problem:
            # A default built from an answer that was already bad fails too; naming it
            # would send the caller after a variable they never gave.
            if not (problem.consequential and failed):
                problems[question.name] = problem.reason
            failed = True
    return answers, problems


def _answer(
    env: SandboxedEnvironment,
    template: str,
    question: Question,
    variables: Mapping[str, Any],
    answers: Mapping[str, Any],
) -> Any:
    given = question.name in variables
    try:
        if given:
            value = cast(question.type, variables[question.name])
        elif question.default is MISSING:
            raise _ProblemError("required")
        else:
            default = question.default
            if isinstance(default, str):
                default = _render(env, default, answers)
            value = cast(question.type, default)
    except ValueError as exc:
        raise _ProblemError(str(exc), consequential=not given) from None
    except JinjaTemplateError as exc:
        raise TemplateError(template, f"default of {question.name!r} fails: {exc}") from exc
    if question.choices and value not in {v for _, v in question.choices}:
        allowed = ", ".join(repr(v) for _, v in question.choices)
        raise _ProblemError(f"must be one of {allowed}", consequential=not given)
    if question.validator:
        try:
            message = _render(env, question.validator, {**answers, question.name: value})
        except JinjaTemplateError as exc:
            raise TemplateError(template, f"validator of {question.name!r} fails: {exc}") from exc
        if message.strip():
            raise _ProblemError(" ".join(message.split()), consequential=not given)
    return value


def _is_asked(
    env: SandboxedEnvironment, question: Question, answers: Mapping[str, Any], template: str
) -> bool:
    when = question.when
    if isinstance(when, bool):
        return when
    try:
        rendered = _render(env, str(when), answers).strip().lower()
    except JinjaTemplateError as exc:
        raise TemplateError(template, f"condition of {question.name!r} fails: {exc}") from exc
    return rendered in _TRUE


def fill_pattern(pattern: str | None, answers: Mapping[str, Any]) -> str | None:
    """``"https://{project_name}.{domain}"`` with the answers filled in; ``None`` when the
    pattern names something the answers lack."""
    if not pattern:
        return None
    try:
        return pattern.format_map(dict(answers))
    except (KeyError, IndexError, ValueError):
        return None
