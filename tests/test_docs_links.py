"""The README and the docs/ pages point only at things that exist, and the README stays a short guide."""

from __future__ import annotations

import glob
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README_MAX_LINES = 300
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

# [text](target) links; images too. The target ends at the first space or closing parenthesis.
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
# Repository paths named in the text: scripts, package files, entry points, tests, benchmarks, assets.
REPO_PATH = re.compile(
    r"(?<![\w./<>-])((?:scripts_visatb|llava|eval|tests|benchmarks|assets|transformers|docs)/[\w./<>*{},-]*)"
)
# Module names: `python -m llava.x.y` and `llava.x.y` in backticks.
MODULE = re.compile(r"(?:python -m |`)(llava(?:\.\w+)+)")


def _expand(pattern: str) -> list[str]:
    """Brace alternatives (`{a,b}`) as separate patterns; `<placeholder>` as a glob wildcard."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match:
        head, tail = pattern[: match.start()], pattern[match.end() :]
        return [p for alt in match.group(1).split(",") for p in _expand(head + alt + tail)]
    return [re.sub(r"<[^<>]*>", "*", pattern)]


def _exists(relative: str) -> bool:
    for pattern in _expand(relative):
        if any(ch in pattern for ch in "*?["):
            if glob.glob(str(REPO / pattern)):
                continue
            return False
        if not (REPO / pattern).exists():
            return False
    return True


def _clean(path: str) -> str:
    """Drop sentence punctuation that the path pattern swallows at its end."""
    return path.rstrip(".,;:)")


def _module_file(name: str) -> Path | None:
    base = REPO / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_exists(name: str) -> bool:
    """A module or package, or a function, class or constant defined at the top of one (`llava.mm_utils.load_image`)."""
    if _module_file(name):
        return True
    parent, _, attribute = name.rpartition(".")
    source = _module_file(parent)
    if source is None:
        return False
    definition = re.compile(rf"^(?:def|class) {attribute}\b|^{attribute}\s*[:=]", re.MULTILINE)
    return bool(definition.search(source.read_text(encoding="utf-8")))


def links(page: Path) -> list[str]:
    """Relative link targets of a page, without their #anchors."""
    targets = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL or an anchor in the same page
        targets.append(target.split("#", 1)[0])
    return targets


def repo_paths(page: Path) -> list[str]:
    """Repository paths a page names (after its links are removed, which test_relative_links_resolve checks)."""
    text = LINK.sub("", page.read_text(encoding="utf-8"))
    return sorted({_clean(p) for p in REPO_PATH.findall(text) if _clean(p).rstrip("/")})


def modules(page: Path) -> list[str]:
    return sorted(set(MODULE.findall(page.read_text(encoding="utf-8"))))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_resolve(page: Path) -> None:
    missing = [t for t in links(page) if not (page.parent / t).exists()]
    assert not missing, f"{page.relative_to(REPO)}: links to missing files: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_named_repository_paths_exist(page: Path) -> None:
    missing = [p for p in repo_paths(page) if not _exists(p)]
    assert not missing, f"{page.relative_to(REPO)}: names paths that do not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_named_modules_exist(page: Path) -> None:
    missing = [m for m in modules(page) if not _module_exists(m)]
    assert not missing, f"{page.relative_to(REPO)}: names modules that do not exist: {missing}"


def test_readme_is_a_short_guide() -> None:
    lines = (REPO / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; keep it at most {README_MAX_LINES}"


def test_checks_catch_what_they_are_for(tmp_path: Path) -> None:
    """The helpers report a missing link, path and module, and accept placeholders that match."""
    page = tmp_path / "page.md"
    page.write_text(
        "[gone](nowhere.md) [web](https://example.org) [here](#top)\n"
        "`scripts_visatb/eval/<benchmark>.sh`, `scripts_visatb/no_such_script.sh`.\n"
        "`python -m llava.visatb.no_such_module`, `llava.visatb.tasks`, `llava.mm_utils.load_image`,\n"
        "`llava.mm_utils.no_such_function`\n",
        encoding="utf-8",
    )
    assert links(page) == ["nowhere.md"]
    assert [p for p in repo_paths(page) if not _exists(p)] == ["scripts_visatb/no_such_script.sh"]
    missing_modules = [m for m in modules(page) if not _module_exists(m)]
    assert missing_modules == ["llava.mm_utils.no_such_function", "llava.visatb.no_such_module"]
