"""The docs stay true to the repository: size, links, paths, the generated metrics table, no outside citations."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from metrics import catalog

pytestmark = pytest.mark.cpu_only

REPO = Path(__file__).resolve().parents[2]
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [REPO / "README.md", *DOCS]
README_LIMIT_BYTES = 10 * 1024

# [text](target) and ![alt](target); a target has no spaces (titles are not used here).
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
# A fenced block, whose contents are not markdown.
_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
# `path` in backticks starting with one of the repository's top-level folders or files.
_TOP = ("bench", "docs", "grafana", "metrics", "rfork_agent", "scheduler", "scripts", "testbed", "tests", "throttle")
_PATH_SPAN = re.compile(r"`((?:%s)/[^`\s]*)`" % "|".join(_TOP))


def _prose(page: Path) -> str:
    return _FENCE.sub("", page.read_text())


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", _prose(page), re.MULTILINE)}


def test_slug_follows_github():
    assert slug("A fleet by hand, on one host") == "a-fleet-by-hand-on-one-host"
    assert slug("GPU results (issue #7)") == "gpu-results-issue-7"
    assert slug("`rfork testbed`") == "rfork-testbed"
    assert slug("Serving QoS throttle: `rfork bench qos` (issue #3)") == "serving-qos-throttle-rfork-bench-qos-issue-3"


def test_readme_stays_a_front_door():
    size = len((REPO / "README.md").read_bytes())
    assert size <= README_LIMIT_BYTES, (
        f"README.md is {size} bytes, over {README_LIMIT_BYTES}: move reference material into docs/")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_resolves(page):
    broken = []
    for target in _LINK.findall(_prose(page)):
        if re.match(r"^[a-z]+:", target):  # https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.name}")
    assert broken == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_repository_path_named_exists(page):
    missing = []
    for path in _PATH_SPAN.findall(page.read_text()):
        path = path.rstrip(".,:;")
        if not list(REPO.glob(path)):
            missing.append(path)
    assert missing == []


def _generator():
    spec = importlib.util.spec_from_file_location("generate_metrics_doc", REPO / "scripts" / "generate_metrics_doc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_metrics_doc_is_generated_from_the_definitions():
    generator, doc = _generator(), REPO / "docs" / "metrics.md"
    text = doc.read_text()
    assert generator.regenerate(text, catalog()) == text, (
        "docs/metrics.md is stale: run `.venv/bin/python scripts/generate_metrics_doc.py` and commit it")
    for family in catalog():
        assert f"| `{family.name}` | {family.process} | {family.type} |" in text


def test_the_generator_check_fails_on_a_stale_table(tmp_path):
    stale = tmp_path / "metrics.md"
    stale.write_text((REPO / "docs" / "metrics.md").read_text().replace("rfork_client_progress_ratio", "renamed", 1))
    script = str(REPO / "scripts" / "generate_metrics_doc.py")
    check = [sys.executable, script, "--check", "--path", str(stale)]
    r = subprocess.run(check, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "stale" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, script, "--path", str(stale)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert subprocess.run(check, capture_output=True, timeout=60).returncode == 0
    assert stale.read_text() == (REPO / "docs" / "metrics.md").read_text()


def _tracked_sources() -> list[Path]:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, timeout=30).stdout
    return [REPO / name for name in files.decode().split("\0")
            if name.endswith((".py", ".sh", ".yml", ".yaml", ".toml", ".json", "Makefile"))]


def test_no_source_cites_a_file_outside_the_repository():
    outside = re.compile(r"NOTES-[A-Z]+\.md|/work/shared|\.\./shared/")
    citing = [f"{p.relative_to(REPO)}: {m.group(0)}"
              for p in _tracked_sources() if p.exists() and p.name != "test_docs.py"
              for m in [outside.search(p.read_text(errors="replace"))] if m]
    assert citing == []


def test_gitignore_covers_the_token_and_venv_symlinks(tmp_path):
    """A clone with the fleet's token and symlinked venvs (as helpers' worktrees have) shows none of them.

    Checked in a fresh repository holding only this .gitignore, so no local
    info/exclude can hide a missing pattern. A venv symlink is a file to git,
    so a `.venv/` pattern (folders only) would not match it.
    """
    (tmp_path / ".gitignore").write_text((REPO / ".gitignore").read_text())
    target = tmp_path / "elsewhere"
    target.mkdir()
    for name in (".venv", ".venv-sglang"):
        (tmp_path / name).symlink_to(target)
    (tmp_path / "fleet.token").write_text("secret\n")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True, timeout=30)
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=tmp_path,
                            capture_output=True, text=True, check=True, timeout=30).stdout.split("\n")
    shown = {line[3:] for line in status if line}
    assert shown & {".venv", ".venv-sglang", "fleet.token"} == set(), shown


def test_design_wire_contract_is_generated_from_the_services_openapi():
    """docs/DESIGN.md's route and body tables come from app.openapi() of the real apps."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, str(REPO / "scripts" / "generate_api_doc.py"), "--check"],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
