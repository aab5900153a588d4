"""The documentation site builds with ``mkdocs build --strict`` and its math renders.

Strict mode turns every warning into an error: dead links and anchors, pages missing from the
navigation, references to API objects that are not documented, docstrings that do not parse.
The build runs once, into a temporary folder; the checks then read the generated HTML. If
Node.js is available, every formula on the site is also typeset with the vendored KaTeX, which
fails on any TeX that KaTeX does not understand.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs.blocks import DOCS, ROOT

for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
    pytest.importorskip(
        module, reason=f"{module} is not installed: the docs need pip install -e '.[docs]'"
    )

MATH = re.compile(r'<(?P<tag>span|div) class="arithmatex">(?P<tex>.*?)</(?P=tag)>', flags=re.DOTALL)
API_PAGES = ["solve", "solvers", "fixed-point", "operators", "nn", "testing", "diagnostics"]
KATEX_CHECK = """
const katex = require(process.argv[2]);
const formulas = JSON.parse(require("fs").readFileSync(process.argv[3], "utf8"));
const errors = [];
for (const [where, tex, display] of formulas) {
  try { katex.renderToString(tex, { displayMode: display, throwOnError: true }); }
  catch (e) { errors.push(`${where}: ${e.message}`); }
}
console.log(JSON.stringify(errors));
"""


def formulas(page: Path) -> list[tuple[str, bool]]:
    """The TeX of every formula arithmatex left in ``page``, and whether it is displayed."""
    found = []
    for match in MATH.finditer(page.read_text()):
        tex = html.unescape(match["tex"]).strip()
        for left, right in (("\\(", "\\)"), ("\\[", "\\]")):
            if tex.startswith(left) and tex.endswith(right):
                tex = tex[len(left) : -len(right)]
        found.append((tex.strip(), match["tag"] == "div"))
    return found


def test_site_builds_strictly_and_renders_math_and_api(tmp_path):
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{log}"

    pages = sorted(site.rglob("index.html"))
    assert len(pages) >= 15
    every: list[tuple[str, str, bool]] = []
    for page in pages:
        text = page.read_text()
        where = str(page.relative_to(site))
        # No Sphinx markup survives: the Griffe extension converted all of it.
        for raw in (":math:`", ".. math::", ":class:`", ":func:`", ":meth:`", ":attr:`"):
            assert raw not in text, f"{where} contains raw Sphinx markup {raw!r}"
        every += [(where, tex, display) for tex, display in formulas(page)]

    # Math is on the theory page and in the API reference (from the docstrings).
    theory = formulas(site / "theory" / "index.html")
    assert len(theory) > 50 and any(display for _, display in theory)
    for name in API_PAGES:
        page = site / "api" / name / "index.html"
        text = page.read_text()
        assert 'class="doc doc-object' in text, f"api/{name}: no API objects rendered"
        assert formulas(page), f"api/{name}: no math rendered"
    solvers = (site / "api" / "solvers" / "index.html").read_text()
    assert "z_{k+1} = z_k + \\beta g_k" in html.unescape(solvers)  # Anderson's `.. math::`

    # The math is typeset by the KaTeX shipped with the site.
    assert (site / "assets" / "katex" / "katex.min.js").is_file()
    assert "assets/katex/katex.min.js" in (site / "index.html").read_text()
    node = shutil.which("node")
    if node is None:
        return  # KaTeX needs a JavaScript runtime; the structural checks above still ran
    formulas_file = tmp_path / "formulas.json"
    formulas_file.write_text(json.dumps(every))
    script = tmp_path / "katex_check.js"
    script.write_text(KATEX_CHECK)
    check = subprocess.run(
        [node, str(script), str(DOCS / "assets/katex/katex.min.js"), str(formulas_file)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, check.stderr
    errors = json.loads(check.stdout)
    assert not errors, "KaTeX cannot typeset:\n" + "\n".join(errors)
