"""The TemplateProvider over copier: built-in templates plus folders of the template path.

Rendering is always ``unsafe=False`` and ``skip_tasks=True``: a template may ask questions
and lay out files, never run code on the machine (tasks, migrations and Jinja extensions
are refused before copier is called). Copier's user settings file is not read either, so
an operator's ``~/.config/copier`` cannot change what a project gets.

Every file is rendered with forgeline's escaping rules (:mod:`.escaping`): a filter per
target language and HTML autoescaping for markup, so a variable lands as data.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import structlog
import yaml

from forgeline.adapters.templates.questions import (
    ANSWERS_FILE,
    TemplateSpec,
    config_file,
    fill_pattern,
    load_spec,
    resolve_answers,
)
from forgeline.domain.errors import (
    ConfigurationError,
    TemplateError,
    TemplateNotFoundError,
    TemplateVariablesError,
)
from forgeline.ports.templates import RenderResult, TemplateInfo

log = structlog.get_logger(__name__)

#: The question every built-in template asks for the project's name; ``project_name=``
#: fills it so callers need not repeat the name among the variables.
PROJECT_NAME_VARIABLE = "project_name"


def builtin_templates_dir() -> Path:
    """The folder of the templates shipped inside the package (package data)."""
    folder = resources.files("forgeline").joinpath("templates")
    if not isinstance(folder, Path):
        # A zipped install would hand back a Traversable; copier needs a real directory.
        raise ConfigurationError("forgeline's built-in templates must be installed unzipped")
    return folder


class CopierTemplateProvider:
    """Templates found in ``search_path`` folders, earlier folders winning on a name clash.

    Each folder's direct sub-folders holding a ``copier.yml`` are templates named after
    the sub-folder. Folders are scanned lazily and once; :meth:`refresh` rescans. Safe to
    share between threads (rendering runs in worker threads).
    """

    def __init__(self, search_path: Sequence[Path], *, builtin: Path | None = None) -> None:
        """``search_path`` is ``settings.template_path``; ``builtin`` overrides the packaged
        folder (tests). The template path comes first so an operator can override a
        built-in template by giving a folder of the same name."""
        self._folders: list[tuple[Path, str]] = [(Path(p), "path") for p in search_path]
        self._folders.append((builtin or builtin_templates_dir(), "builtin"))
        self._lock = threading.Lock()
        self._specs: dict[str, TemplateSpec] | None = None

    # --- listing --------------------------------------------------------------------------

    def refresh(self) -> None:
        """Forget the scanned templates; the next call scans the folders again."""
        with self._lock:
            self._specs = None

    def _scan(self) -> dict[str, TemplateSpec]:
        with self._lock:
            if self._specs is None:
                self._specs = dict(_discover(self._folders))
            return self._specs

    def list_templates(self) -> list[TemplateInfo]:
        """Every template, sorted by name."""
        return [spec.info() for _, spec in sorted(self._scan().items())]

    def _spec(self, name: str) -> TemplateSpec:
        specs = self._scan()
        spec = specs.get(name)
        if spec is None:
            raise TemplateNotFoundError(name, sorted(specs))
        return spec

    def get_template(self, name: str) -> TemplateInfo:
        """One template, or ``TemplateNotFoundError`` listing the known ones."""
        return self._spec(name).info()

    # --- validating and rendering ---------------------------------------------------------

    def validate(
        self, name: str, variables: Mapping[str, Any], *, project_name: str | None = None
    ) -> dict[str, Any]:
        """The answers rendering would use; ``TemplateVariablesError`` naming every bad one."""
        spec = self._spec(name)
        return self._answers(spec, variables, project_name)

    def _answers(
        self, spec: TemplateSpec, variables: Mapping[str, Any], project_name: str | None
    ) -> dict[str, Any]:
        given = dict(variables)
        asks_name = any(q.name == PROJECT_NAME_VARIABLE for q in spec.questions)
        if project_name is not None and asks_name:
            given.setdefault(PROJECT_NAME_VARIABLE, project_name)
        answers, problems = resolve_answers(spec, given)
        if problems:
            raise TemplateVariablesError(spec.name, problems)
        return answers

    def render(
        self,
        name: str,
        variables: Mapping[str, Any],
        dest: Path,
        *,
        project_name: str | None = None,
    ) -> RenderResult:
        """Validate, then render into ``dest`` and record the answers file. Files the
        template also has are replaced (a new repository's initial README); others stay."""
        spec = self._spec(name)
        answers = self._answers(spec, variables, project_name)
        return self._copy(spec, answers, dest)

    def reapply(
        self, dest: Path, variables: Mapping[str, Any] | None = None, *, name: str | None = None
    ) -> RenderResult:
        """Render the (possibly newer) template over ``dest`` with its recorded answers.

        Copier's own ``run_update`` needs the template to be a git repository and
        ``run_recopy`` trusts the absolute template path recorded at creation, which moves
        whenever forgeline is reinstalled; so the template is found by name here and the
        recorded answers are fed to a fresh copy that overwrites the template's files.
        """
        recorded = _read_answers(dest)
        template = name or _template_name(recorded)
        if template is None:
            raise TemplateError(str(dest), f"no template recorded in {ANSWERS_FILE}")
        spec = self._spec(template)
        known = {q.name for q in spec.questions}
        # Answers of questions the template no longer asks are dropped, not reported: the
        # caller did not give them, the old template version did.
        merged = {k: v for k, v in recorded.items() if k in known}
        merged.update(variables or {})
        answers = self._answers(spec, merged, None)
        return self._copy(spec, answers, dest)

    def _copy(self, spec: TemplateSpec, answers: dict[str, Any], dest: Path) -> RenderResult:
        if spec.unsafe_features:
            features = ", ".join(spec.unsafe_features)
            raise TemplateError(spec.name, f"uses {features}, which forgeline never runs")
        from copier._settings import SettingsModel
        from copier.errors import CopierError

        from forgeline.adapters.templates.copier_worker import EscapingWorker

        try:
            with EscapingWorker(
                src_path=str(spec.path),
                dst_path=dest,
                data=answers,
                answers_file=Path(ANSWERS_FILE),
                settings=SettingsModel(),
                defaults=True,
                # Always: without it copier asks on the terminal about every file that
                # exists already (a forge's initial README), which would hang a server.
                overwrite=True,
                quiet=True,
                unsafe=False,
                skip_tasks=True,
            ) as worker:
                worker.run_copy()
        except (CopierError, ValueError) as exc:
            # Copier re-validates while rendering; with our checks first this only happens
            # for validators our sandbox could not foresee, and still names the variable.
            raise TemplateError(spec.name, f"rendering failed: {exc}") from exc
        except OSError as exc:
            raise TemplateError(spec.name, f"cannot write {dest}: {exc.strerror}") from exc
        log.info("template rendered", template=spec.name, dest=str(dest))
        return RenderResult(
            template=spec.name,
            answers=answers,
            answers_file=ANSWERS_FILE,
            deploy_url=fill_pattern(spec.deploy_url, answers),
        )


def _discover(folders: Iterable[tuple[Path, str]]) -> Iterable[tuple[str, TemplateSpec]]:
    seen: set[str] = set()
    for folder, source in folders:
        if not folder.is_dir():
            log.warning("template folder missing", folder=str(folder))
            continue
        for child in sorted(folder.iterdir()):
            if child.name in seen or not child.is_dir() or config_file(child) is None:
                continue
            try:
                spec = load_spec(child, source=source)
            except TemplateError as exc:
                # One broken template must not hide the others; it is logged, not listed.
                log.warning("template skipped", template=child.name, reason=exc.reason)
                continue
            seen.add(child.name)
            yield child.name, spec


def _read_answers(dest: Path) -> dict[str, Any]:
    path = dest / ANSWERS_FILE
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TemplateError(str(dest), f"no {ANSWERS_FILE}: not rendered from a template") from None
    except (OSError, yaml.YAMLError) as exc:
        raise TemplateError(str(dest), f"cannot read {ANSWERS_FILE}: {exc}") from exc
    if not isinstance(data, dict):
        raise TemplateError(str(dest), f"{ANSWERS_FILE} is not a mapping")
    return data


def _template_name(recorded: Mapping[str, Any]) -> str | None:
    # Copier records the template's folder as `_src_path`; its last component is the
    # template's name wherever forgeline happens to be installed now.
    src = recorded.get("_src_path")
    return Path(str(src)).name if src else None
