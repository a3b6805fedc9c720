"""The documentation's promises that code can check: it builds, its links land, its tables are
the code's own (settings, metrics), and every benchmark script has its table."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
from helpers.servers import free_port
from werkzeug.test import Client

from wsgi_memopt import MemoryOptimizer, Settings

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = (ROOT / "README.md").read_text(encoding="utf-8")
SETTINGS_TABLE = re.compile(
    r"<!-- settings-table:[^\n]*-->\n(.*?)\n<!-- end settings-table -->", re.S
)
# [text](target): the target up to the first space or closing parenthesis.
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _page(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def _pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def _slug(heading: str) -> str:
    """The anchor Python-Markdown's toc extension (MkDocs' default) gives a heading."""
    text = unicodedata.normalize("NFKD", heading).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _anchors(markdown: str) -> set[str]:
    headings = re.findall(r"^#{1,6} (.+)$", FENCE.sub("", markdown), re.M)
    return {_slug(heading) for heading in headings}


def _require_mkdocs() -> None:
    # CI installs the test extra, which holds mkdocs: there a missing mkdocs is a failure.
    if importlib.util.find_spec("mkdocs") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("mkdocs is not installed; the test extra must bring it")
        pytest.skip("mkdocs is not installed")


# -- the site


def test_docs_build_without_a_warning(tmp_path: Path) -> None:
    _require_mkdocs()
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    assert "WARNING" not in build.stderr, build.stderr
    assert (tmp_path / "caching" / "index.html").is_file()


def test_every_page_is_in_the_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for page in _pages():
        assert f": {page.name}\n" in nav, f"{page.name} is not in mkdocs.yml's nav"


# -- links


def test_every_relative_link_in_the_readme_points_at_a_file() -> None:
    links = [target for target in LINK.findall(FENCE.sub("", README)) if "://" not in target]
    assert links, "the README lost its links to docs/"
    for target in links:
        path, _, anchor = target.partition("#")
        file = ROOT / path
        assert file.exists(), f"README links to {target}, which does not exist"
        if anchor:
            markdown = file.read_text(encoding="utf-8")
            assert anchor in _anchors(markdown), f"README links to {target}: no such heading"


def test_the_readme_links_every_docs_page() -> None:
    for page in _pages():
        assert f"(docs/{page.name})" in README, f"the README does not link docs/{page.name}"


def test_anchors_are_those_markdown_makes() -> None:
    # The README's anchors are checked with _slug; it must agree with the toc extension.
    _require_mkdocs()  # which brings Python-Markdown
    import markdown

    def ids(tokens: list[dict[str, object]]) -> set[str]:
        found: set[str] = set()
        for token in tokens:
            found.add(str(token["id"]))
            found |= ids(token["children"])  # type: ignore[arg-type]
        return found

    for page in _pages():
        text = page.read_text(encoding="utf-8")
        converter = markdown.Markdown(extensions=["toc", "tables", "fenced_code"])
        converter.convert(text)
        assert _anchors(text) == ids(converter.toc_tokens), page.name  # type: ignore[attr-defined]


# -- what the pages say


def test_settings_table_is_generated_from_the_settings_definition() -> None:
    match = SETTINGS_TABLE.search(_page("settings.md"))
    assert match is not None, "docs/settings.md lost its settings-table markers"
    assert match.group(1) == Settings.markdown_table(), (
        "docs/settings.md's table drifted from Settings; regenerate it with "
        'python3 -c "from wsgi_memopt import Settings; print(Settings.markdown_table())"'
    )


def test_every_setting_is_explained_on_a_topic_page() -> None:
    # The generated table gives one line; each setting also belongs to a page that says why.
    topics = "".join(
        page.read_text(encoding="utf-8") for page in _pages() if page.name != "settings.md"
    )
    for name in Settings.NAMES:
        assert re.search(rf"`[^`\n]*\b{name}\b[^`\n]*`", topics), f"no page explains {name}"


def test_metrics_table_lists_what_the_endpoint_serves() -> None:
    pytest.importorskip("prometheus_client")
    documented = set(
        re.findall(r"^\| `(wsgi_memopt_\w+)` \| (gauge|counter) \|", _page("metrics.md"), re.M)
    )

    def app(environ: dict[str, object], start_response: object) -> list[bytes]:
        raise AssertionError("the API must answer /metrics itself")

    # With a shared backend (down: its families are served all the same), every family.
    backend = f"redis://127.0.0.1:{free_port()}/0"
    optimizer = MemoryOptimizer(app, api_token="t0ken", monitor_interval_s=0, cache_backend=backend)
    client = Client(optimizer)
    response = client.get("/api/v1/memory/metrics", headers={"Authorization": "Bearer t0ken"})
    assert response.status_code == 200
    served = set(re.findall(r"^# TYPE (wsgi_memopt_\w+) (gauge|counter)$", response.text, re.M))
    response.close()
    assert documented == served


def test_performance_page_has_each_benchmark_script_under_its_command() -> None:
    page = _page("performance.md")
    scripts = [
        path.name
        for path in sorted((ROOT / "benchmarks").glob("*.py"))
        if 'if __name__ == "__main__":' in path.read_text(encoding="utf-8")
    ]
    assert scripts
    for script in scripts:
        assert f"```sh\npython3 benchmarks/{script}\n```" in page, f"no table for {script}"


@pytest.mark.parametrize("name", ["README.md", *(f"docs/{page.name}" for page in _pages())])
def test_no_page_cites_a_contract_the_repository_does_not_hold(name: str) -> None:
    assert not re.search(r"\bSPEC\b", (ROOT / name).read_text(encoding="utf-8"))
