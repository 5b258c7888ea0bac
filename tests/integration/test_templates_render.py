"""Each built-in template renders into a real, working project with a deploying pipeline."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
import yaml
from markdown_it import MarkdownIt

from forgeline.adapters.templates import CopierTemplateProvider
from forgeline.domain.errors import TemplateVariablesError
from tests.support.html_items import html_items

BUILTINS = ["astro-landing", "python-api", "static-site"]

CUSTOM: dict[str, dict[str, Any]] = {
    "astro-landing": {
        "title": "Launchpad <Beta>",
        "tagline": 'Ship it — with "quotes" & ampersands.',
        "brand_color": "#ff6600",
        "domain": "apps.example.org",
    },
    "static-site": {
        "title": "Field Notes",
        "description": "Notes from the field.",
        "accent_color": "#123",
        "domain": "example.net",
    },
    "python-api": {
        "title": "Inventory API",
        "description": "Keeps track of things.",
        "python_version": "3.11",
        "port": "9000",
        "domain": "example.io",
    },
}


@pytest.fixture(scope="module")
def provider() -> CopierTemplateProvider:
    """The built-in templates."""
    return CopierTemplateProvider([])


def render(provider: CopierTemplateProvider, name: str, dest: Path, custom: bool) -> dict[str, Any]:
    """Render ``name`` into ``dest`` (defaults or custom variables); its answers."""
    variables = CUSTOM[name] if custom else {}
    result = provider.render(name, variables, dest, project_name="demo-app")
    return dict(result.answers)


def text_files(root: Path) -> list[Path]:
    """Every file of a rendered project."""
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("custom", [False, True], ids=["defaults", "custom"])
@pytest.mark.parametrize("name", BUILTINS)
def test_renders_completely(
    provider: CopierTemplateProvider, tmp_path: Path, name: str, custom: bool
) -> None:
    """Rendering leaves no template syntax or .jinja suffix behind and records the answers,
    and custom variables reach the files."""
    dest = tmp_path / "project"
    answers = render(provider, name, dest, custom)
    for path in text_files(dest):
        assert not path.name.endswith(".jinja"), path
        text = path.read_text()
        assert "{{" not in text, path
        assert "{%" not in text, path
    recorded = yaml.safe_load((dest / ".copier-answers.yml").read_text())
    for key, value in answers.items():
        assert recorded[key] == value
    if custom:
        assert answers["title"] == CUSTOM[name]["title"]
        readme = (dest / "README.md").read_text()
        assert CUSTOM[name]["title"] in PARSERS[".md"](readme)
        assert f"https://demo-app.{CUSTOM[name]['domain']}" in readme


def from_secrets(node: Any) -> set[str]:
    """Every ``from_secret`` name inside a step definition."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "from_secret":
                found.add(str(value))
            else:
                found |= from_secrets(value)
    elif isinstance(node, list):
        for item in node:
            found |= from_secrets(item)
    return found


@pytest.mark.parametrize("name", BUILTINS)
def test_pipeline_builds_and_deploys(
    provider: CopierTemplateProvider, tmp_path: Path, name: str
) -> None:
    """.woodpecker.yaml parses, runs on push and manual, has build and deploy steps, and
    reads only the deploy secrets the template declares."""
    dest = tmp_path / "project"
    answers = render(provider, name, dest, custom=True)
    pipeline = yaml.safe_load((dest / ".woodpecker.yaml").read_text())
    events = {e for cond in pipeline["when"] for e in cond["event"]}
    assert {"push", "manual"} <= events
    steps = {step["name"]: step for step in pipeline["steps"]}
    assert {"build", "deploy"} <= set(steps)
    deploy = steps["deploy"]
    assert "kubeconfig" in from_secrets(deploy)
    assert any("rollout status deployment/demo-app" in c for c in deploy["commands"])
    declared = set(provider.get_template(name).secrets)
    assert from_secrets(pipeline["steps"]) == declared
    manifests = list(yaml.safe_load_all((dest / "deploy" / "kubernetes.yaml").read_text()))
    assert [m["kind"] for m in manifests] == ["Deployment", "Service", "Ingress"]
    assert manifests[2]["spec"]["rules"][0]["host"] == f"demo-app.{answers['domain']}"


def test_astro_site_config_carries_the_variables(
    provider: CopierTemplateProvider, tmp_path: Path
) -> None:
    """Title, tagline, brand colour and domain land in src/site.json, quotes and all."""
    dest = tmp_path / "project"
    render(provider, "astro-landing", dest, custom=True)
    site = json.loads((dest / "src" / "site.json").read_text())
    assert site == {
        "title": "Launchpad <Beta>",
        "tagline": 'Ship it — with "quotes" & ampersands.',
        "brandColor": "#ff6600",
        "domain": "apps.example.org",
        "url": "https://demo-app.apps.example.org",
    }
    assert json.loads((dest / "package.json").read_text())["name"] == "demo-app"


def step_script(pipeline: Path, step: str) -> str:
    """A step's commands as a shell script, with Woodpecker's ``$$`` escapes undone."""
    steps = {s["name"]: s for s in yaml.safe_load(pipeline.read_text())["steps"]}
    return "set -e\n" + "\n".join(c.replace("$$", "$") for c in steps[step]["commands"])


def test_static_site_check_step_passes_and_catches_broken_links(
    provider: CopierTemplateProvider, tmp_path: Path
) -> None:
    """The static site's own check step passes as rendered and fails on a dangling link."""
    dest = tmp_path / "project"
    render(provider, "static-site", dest, custom=False)
    script = step_script(dest / ".woodpecker.yaml", "check")
    ok = subprocess.run(
        ["sh", "-c", script], cwd=dest, capture_output=True, timeout=30, check=False
    )
    assert ok.returncode == 0, ok.stderr
    (dest / "site" / "about.html").unlink()
    broken = subprocess.run(
        ["sh", "-c", script], cwd=dest, capture_output=True, text=True, timeout=30, check=False
    )
    assert broken.returncode != 0
    assert "missing site/about.html" in broken.stdout


@pytest.mark.slow
def test_python_api_own_tests_pass(provider: CopierTemplateProvider, tmp_path: Path) -> None:
    """The rendered FastAPI service installs with its declared test extras into a throwaway
    virtualenv and its own test suite passes."""
    uv = shutil.which("uv")
    assert uv, "uv is required (scripts/check installs it)"
    dest = tmp_path / "project"
    render(provider, "python-api", dest, custom=True)
    assert (dest / "src" / "demo_app" / "main.py").is_file()
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    subprocess.run(
        [uv, "venv", "--quiet", "--python", sys.executable, str(venv)],
        check=True,
        timeout=120,
        env=env,
    )
    python = venv / "bin" / "python"
    subprocess.run(
        [uv, "pip", "install", "--quiet", "--python", str(python), ".[test]"],
        cwd=dest,
        check=True,
        timeout=300,
        env=env,
    )
    tests = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        check=False,
        cwd=dest,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert re.search(r"\b4 passed\b", tests.stdout), tests.stdout


@pytest.mark.slow
def test_astro_landing_builds(provider: CopierTemplateProvider, tmp_path: Path) -> None:
    """npm install && npm run build turns the rendered landing page into static files that
    carry the title, tagline and brand colour."""
    npm = shutil.which("npm")
    assert npm, "npm is required to build the astro-landing template"
    dest = tmp_path / "project"
    render(provider, "astro-landing", dest, custom=True)
    env = {**os.environ, "ASTRO_TELEMETRY_DISABLED": "1", "CI": "1"}
    for args, limit in (
        ([npm, "install", "--no-audit", "--no-fund", "--loglevel=error"], 480),
        ([npm, "run", "build"], 240),
    ):
        done = subprocess.run(
            args, cwd=dest, capture_output=True, text=True, timeout=limit, env=env, check=False
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    page = (dest / "dist" / "index.html").read_text()
    assert "Launchpad &lt;Beta&gt;" in page
    assert "with &quot;quotes&quot; &amp; ampersands." in page
    assert "#ff6600" in page
    assert (dest / "dist" / "favicon.svg").read_text().count("#ff6600") == 1


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``forgeline`` in a child process, as from a shell."""
    return subprocess.run(
        [sys.executable, "-m", "forgeline", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200", **env},
        check=False,
    )


def test_cli_lists_templates_with_variables(tmp_path: Path) -> None:
    """`forgeline templates --json` lists built-ins and template-path folders with their
    variables; without --json it prints a table."""
    extra = tmp_path / "more"
    (extra / "notes").mkdir(parents=True)
    (extra / "notes" / "copier.yml").write_text("topic:\n  type: str\n  help: What about\n")
    env = {"FORGELINE_TEMPLATE_PATH": str(extra), "FORGELINE_DATA_DIR": str(tmp_path / "d")}
    out = run_cli("templates", "--json", env=env)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["name"] for r in rows] == ["astro-landing", "notes", "python-api", "static-site"]
    astro = rows[0]
    assert {v["name"] for v in astro["variables"]} >= {"title", "tagline", "brand_color", "domain"}
    assert rows[1]["variables"] == [
        {
            "name": "topic",
            "type": "str",
            "help": "What about",
            "default": None,
            "required": True,
            "choices": [],
            "secret": False,
        }
    ]
    table = run_cli("templates", env=env)
    assert table.returncode == 0, table.stderr
    for name in ("astro-landing", "python-api", "static-site", "notes", "brand_color"):
        assert name in table.stdout


# --- hostile variables ----------------------------------------------------------------------

#: Values that escape a string literal, a tag, a comment or a document when pasted unescaped
#: into Python, TOML, JSON, JavaScript, HTML, SVG, YAML or Markdown.
HOSTILE = {
    "quotes": "He said \"hi\" & 'bye' \"\"\" ''' `tick`",
    "newlines": "first line\nsecond line\n\tindented\n",
    "jinja": "{{ 7 * 7 }} {% raw %} {# no #}",
    "script": "</script><script>alert(1)</script></title><b>bold",
    "backslashes": "C:\\new\\table \\ \\\\ \\u0041 \\x00 \\",
    "interpolation": "${HOME} $(id) `id` #{x} %s {0}",
    "comments": "--> <!-- */ /* # // ]]>",
    "yaml": "---\n...\n%YAML 1.2\n- a: b\n? c: [d]",
    "unicode": "Café 🚀 \u2028 \u202e \ufeff end",
    "markdown": "# not a heading *x* [l](javascript:alert(1)) | a | b | <!--",
}

#: The free-text variables of each built-in template: the ones a hostile value can reach.
FREE_TEXT = {
    "astro-landing": ("title", "tagline"),
    "python-api": ("title", "description"),
    "static-site": ("title", "description"),
}


def marker(variable: str) -> str:
    """A value for ``variable`` that is plain text in every language (letters only)."""
    return f"zq{variable.replace('_', '')}zq"


def walk_strings(node: Any) -> list[str]:
    """Every string key and value of parsed JSON, TOML or YAML, in document order."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for key, value in node.items() for s in walk_strings(key) + walk_strings(value)]
    if isinstance(node, list):
        return [s for item in node for s in walk_strings(item)]
    return []


def xml_strings(text: str) -> list[str]:
    """The tags, attribute values and texts of an XML document (SVG), parsed strictly."""
    # The test's own render; expat refuses entity expansion bombs anyway.
    root = ElementTree.fromstring(text)  # noqa: S314
    return [s for e in root.iter() for s in (e.tag, *e.attrib.values(), e.text or "", e.tail or "")]


def python_strings(text: str) -> list[str]:
    """The string constants of Python source (docstrings included)."""
    return [
        n.value
        for n in ast.walk(ast.parse(text))
        if isinstance(n, ast.Constant) and isinstance(n.value, str)
    ]


def javascript_strings(text: str) -> list[str]:
    """Nothing, once node has parsed ``text`` as an ES module (no variable reaches one)."""
    node = shutil.which("node")
    assert node, "node is required to check the rendered JavaScript"
    checked = subprocess.run(
        [node, "--input-type=module", "--check"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    return []


#: Per suffix, the strings a file carries as data, in document order; parsing fails the test.
PARSERS: dict[str, Callable[[str], list[str]]] = {
    ".py": python_strings,
    ".json": lambda text: walk_strings(json.loads(text)),
    ".toml": lambda text: walk_strings(tomllib.loads(text)),
    ".yaml": lambda text: walk_strings(list(yaml.safe_load_all(text))),
    ".yml": lambda text: walk_strings(list(yaml.safe_load_all(text))),
    ".html": html_items,
    ".svg": xml_strings,
    # What a forge shows: the Markdown rendered to HTML, then read as HTML.
    ".md": lambda text: html_items(MarkdownIt("commonmark").render(text)),
    ".mjs": javascript_strings,
}


def as_rendered(path: Path, value: str) -> str:
    """``value`` as a reader of ``path`` sees it: Markdown folds line breaks and runs of
    spaces into one space (forgeline's Markdown filter writes one line)."""
    return " ".join(value.split()) if path.suffix == ".md" else value


@pytest.mark.parametrize("hostile", HOSTILE.values(), ids=HOSTILE.keys())
@pytest.mark.parametrize("name", BUILTINS)
def test_hostile_values_stay_data(
    provider: CopierTemplateProvider, tmp_path: Path, name: str, hostile: str
) -> None:
    """A hostile value in every free-text variable leaves every rendered file parseable by
    its language's parser with the same structure as a plain render, the value showing up
    as data exactly where the plain value did, and files it does not reach unchanged."""
    variables = FREE_TEXT[name]
    plain_dest, hostile_dest = tmp_path / "plain", tmp_path / "hostile"
    provider.render(name, {v: marker(v) for v in variables}, plain_dest, project_name="demo")
    provider.render(name, dict.fromkeys(variables, hostile), hostile_dest, project_name="demo")
    plain_files = text_files(plain_dest)
    assert [p.relative_to(plain_dest) for p in plain_files] == [
        p.relative_to(hostile_dest) for p in text_files(hostile_dest)
    ]
    for plain in plain_files:
        rel = plain.relative_to(plain_dest)
        rendered = hostile_dest / rel
        parse = PARSERS.get(rel.suffix)
        if parse is None:
            assert rendered.read_bytes() == plain.read_bytes(), rel
            continue
        got = parse(rendered.read_text())
        expected = parse(plain.read_text())
        if rel == Path("public/favicon.svg"):
            # The icon shows the title's first letter, not the whole title.
            letter = marker("title")[:1].upper()
            expected = [s.replace(letter, hostile[:1].upper()) for s in expected]
        for variable in variables:
            expected = [s.replace(marker(variable), as_rendered(rel, hostile)) for s in expected]
        assert got == expected, rel


@pytest.mark.parametrize(
    ("name", "variable", "valid"),
    [
        ("astro-landing", "project_name", "demo"),
        ("astro-landing", "brand_color", "#4f46e5"),
        ("astro-landing", "domain", "example.com"),
        ("python-api", "project_name", "demo"),
        ("python-api", "domain", "example.com"),
        ("python-api", "python_version", "3.12"),
        ("static-site", "project_name", "demo"),
        ("static-site", "accent_color", "#0f766e"),
        ("static-site", "domain", "example.com"),
    ],
)
def test_naming_variables_refuse_hostile_values(
    provider: CopierTemplateProvider, tmp_path: Path, name: str, variable: str, valid: str
) -> None:
    """Variables that name things (packages, hosts, colours, versions) accept only their
    pattern: every hostile value, and a valid one with a line break after it, is refused
    with an error naming the variable, before anything is written."""
    dest = tmp_path / "out"
    provider.validate(name, {variable: valid}, project_name="demo")
    for bad in [*HOSTILE.values(), f"{valid}\n", f"{valid}\n---\n", f" {valid}"]:
        with pytest.raises(TemplateVariablesError) as caught:
            provider.render(name, {"project_name": "demo", variable: bad}, dest)
        assert variable in caught.value.problems, bad
        assert not dest.exists()


def test_crafted_title_runs_nothing_when_the_app_is_imported(
    provider: CopierTemplateProvider, tmp_path: Path
) -> None:
    """The reported exploit: a title that would close its string literal and open a file
    when the generated FastAPI app is imported is, once imported, only the app's title."""
    title = 'x" if open("pwned", "w") else "'
    dest = tmp_path / "project"
    provider.render("python-api", {"title": title}, dest, project_name="demo-app")
    imported = subprocess.run(
        [sys.executable, "-c", "from demo_app.main import app; print(app.title)"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(dest / "src")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout == f"{title}\n"
    assert not (tmp_path / "pwned").exists()
