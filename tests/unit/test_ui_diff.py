"""The dashboard's diff reader against real patches made by git."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from forgeline.entrypoints.ui.diff import DiffFile, parse_patch
from forgeline.entrypoints.ui.web import templates


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout


@pytest.fixture
def patch_text(tmp_path: Path) -> str:
    """The patch of a commit that adds, changes, removes, renames and binary-edits files,
    with names git must quote and lines that look like file headers."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    (repo / "keep.txt").write_text("one\n-- dashes\ntwo\n")
    (repo / "gone.txt").write_text("bye\n")
    (repo / "old name.md").write_text("".join(f"line {i}\n" for i in range(20)))
    (repo / "tail.txt").write_text("no newline")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "base")
    (repo / "keep.txt").write_text("one\n++ pluses\ntwo\n")
    (repo / "gone.txt").unlink()
    (repo / "old name.md").rename(repo / "new name.md")
    with (repo / "new name.md").open("a") as fh:
        fh.write("line 20\n")
    (repo / "dir").mkdir()
    (repo / "dir" / "tést <b>.html").write_text("<script>alert(1)</script>\n")
    (repo / "logo.bin").write_bytes(bytes(range(256)))
    (repo / "tail.txt").write_text("still none")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "change")
    # The flags forgeline reads a pushed commit's patch with.
    return _git(repo, "diff-tree", "--patch", "--root", "--no-commit-id", "--find-renames", "HEAD")


def _by_path(files: list[DiffFile]) -> dict[str, DiffFile]:
    return {f.new_path or f.old_path or "": f for f in files}


def test_reads_every_kind_of_change(patch_text: str) -> None:
    """Added, removed, renamed, binary and changed files come out with their paths (quoted
    names decoded), status and counts."""
    patch = parse_patch(patch_text)
    files = _by_path(patch.files)
    assert set(files) == {
        "dir/tést <b>.html",
        "gone.txt",
        "keep.txt",
        "logo.bin",
        "new name.md",
        "tail.txt",
    }
    added = files["dir/tést <b>.html"]
    assert added.status == "added"
    assert added.old_path is None
    assert [(line.kind, line.text) for line in added.lines[1:]] == [
        ("added", "<script>alert(1)</script>")
    ]
    assert files["gone.txt"].status == "deleted"
    assert files["gone.txt"].deletions == 1
    renamed = files["new name.md"]
    assert renamed.status == "renamed"
    assert renamed.old_path == "old name.md"
    assert renamed.path == "old name.md → new name.md"
    assert (renamed.additions, renamed.deletions) == (1, 0)
    assert files["logo.bin"].binary
    assert files["logo.bin"].lines == []


def test_lines_that_look_like_headers_stay_content(patch_text: str) -> None:
    """``+++``/``---`` inside a hunk are an added and a removed line, numbered in their file;
    ``\\ No newline at end of file`` is a note."""
    keep = _by_path(parse_patch(patch_text).files)["keep.txt"]
    shown = [(line.kind, line.text, line.old, line.new) for line in keep.lines]
    assert shown == [
        ("hunk", "@@ -1,3 +1,3 @@", None, None),
        ("context", "one", 1, 1),
        ("removed", "-- dashes", 2, None),
        ("added", "++ pluses", None, 2),
        ("context", "two", 3, 3),
    ]
    tail = _by_path(parse_patch(patch_text).files)["tail.txt"]
    assert [line.kind for line in tail.lines] == ["hunk", "removed", "note", "added", "note"]
    assert tail.lines[2].text == "No newline at end of file"


def test_a_long_patch_is_cut(patch_text: str) -> None:
    """Past the line limit the rest is left out and the patch says it was cut."""
    patch = parse_patch(patch_text, max_lines=10)
    assert patch.cut
    assert sum(len(f.lines) for f in patch.files) < 10
    assert not parse_patch(patch_text).cut


def test_garbage_is_no_file() -> None:
    """Text that is no patch gives no files and no error."""
    assert parse_patch("hello\n@@ nonsense\n+++ x\n").files == []


def test_rendered_with_headers_colours_and_escaped_text(patch_text: str) -> None:
    """The page's diff: one header per file (escaped name, status, counts), added and
    removed lines by class, every text escaped, nothing of the patch as markup."""
    # A template module's macros are attributes made at render time: untyped.
    macros: Any = templates.get_template("_macros.html").module
    html = str(macros.diff_view(parse_patch(patch_text)))
    assert '<span class="mono">dir/tést &lt;b&gt;.html</span> <span class="badge">added' in html
    assert '<span class="mono">old name.md → new name.md</span>' in html
    assert (
        '<tr class="line-added"><td class="no"></td><td class="no">1</td>'
        '<td class="code">&lt;script&gt;alert(1)&lt;/script&gt;</td></tr>'
    ) in html
    assert '<tr class="line-removed"><td class="no">2</td><td class="no"></td>' in html
    assert "<script>" not in html
    assert "binary file" in html
