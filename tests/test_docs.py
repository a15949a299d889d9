"""The documentation builds (``mkdocs build --strict``) into a site that needs no network, and
the tutorial's code runs and says what the tutorial claims it says.

(tests/test_docs_browser.py opens the built pages in headless Chromium, offline.)"""

import importlib.util
import json
import re
import runpy
import shutil
import subprocess
import sys
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from conftest import REPO

DOCS = REPO / "docs"
TUTORIAL_CODE = DOCS / "tutorial_code"


def run_tutorial(name: str, **kwargs) -> dict:
    namespace = runpy.run_path(str(TUTORIAL_CODE / f"{name}.py"), run_name="tutorial")
    return namespace["main"](**kwargs)


def test_gaussian_mixture_tutorial():
    out = run_tutorial("gaussian_mixture")
    # With the assignment enumerated and no other latents, TraceEnum_ELBO's loss is exactly
    # -log p(x) (float32 sums of 1500 terms: relative 1e-5).
    assert out["loss"] == pytest.approx(out["neg_log_lik"], rel=1e-5)
    # Same model as scikit-learn's diagonal GaussianMixture fitted by EM: SVI reaches its
    # log-likelihood to 0.01 nats/point (measured 0.001) on well-separated clusters.
    assert out["log_lik_per_point"] == pytest.approx(out["sklearn_log_lik_per_point"], abs=0.01)
    assert out["agreement"] > 0.98  # the planted clusters barely overlap (measured 1.0)
    assert sorted(out["weights"]) == pytest.approx([0.2, 0.3, 0.5], abs=0.04)  # N = 1500


def test_factor_analysis_tutorial():
    out = run_tutorial("factor_analysis")
    # The library's FA (full-covariance guide = the exact posterior family) reaches EM's
    # maximum likelihood (measured to 1e-4) and its ELBO is tight (gap measured 2e-4; the
    # 100-particle ELBO's Monte-Carlo error is ~1e-3).
    assert out["full_exact"] == pytest.approx(out["sklearn"], abs=0.01)
    assert abs(out["full_exact"] - out["full_elbo"]) < 0.01
    # The tutorial's mean-field guide can't represent the correlated posterior: its ELBO is
    # strictly below log p(x) (gap measured 0.04) and the fit it drives is worse than ML.
    assert out["exact"] - out["elbo"] > 0.01
    assert out["exact"] < out["sklearn"]


def test_own_networks_tutorial():
    out = run_tutorial("own_networks")
    vae, m2 = out["vae"], out["m2"]
    # The models run the user's modules (converted to PyroModule subclasses), not built ones.
    def classes(module):
        return [c.__name__ for c in type(module).__mro__]

    assert "Encoder" in classes(vae.encoder) and "LabelledEncoder" in classes(m2.encoder)
    assert isinstance(vae.decoder, torch.nn.Sequential)
    # Both train: the last epoch's loss is far below the first (measured 6544 -> 4500 and
    # 6663 -> 4200 in 15 epochs: random networks start ~2000 nats above a fitted one).
    assert out["vae_losses"][-1] < out["vae_losses"][0] - 1000
    assert out["m2_losses"][-1] < out["m2_losses"][0] - 1000
    # Three well-separated classes, 10 labels each: q(y|x) classifies the rest (measured 0.99).
    assert out["accuracy"] > 0.9
    assert out["samples"].shape == (3, 16)


def test_every_tutorial_file_is_included_in_the_docs():
    pages = "\n".join(p.read_text() for p in DOCS.rglob("*.md"))
    included = set(re.findall(r'--8<-- "([\w./-]+?)(?::[\w-]+)?"', pages))
    files = {p.name for p in TUTORIAL_CODE.glob("*.py")}
    assert files <= included, f"tutorial files no page shows: {sorted(files - included)}"


needs_docs_extra = pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None,
    reason="docs extra not installed: pip install -e '.[docs]'",
)


def build_site(out: Path, config: Path = REPO / "mkdocs.yml") -> Path:
    """``mkdocs build --strict`` of ``config`` into ``out``; fails the test, with mkdocs'
    output, if the build fails or logs any warning.

    Not ``--quiet``: it drops warnings before strict mode counts them, so a build with
    warnings would pass.
    """
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(out)],
        cwd=config.parent, capture_output=True, text=True, timeout=300,
    )
    output = result.stdout + result.stderr
    warnings = [line for line in output.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert result.returncode == 0 and not warnings, output
    return out


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    return build_site(tmp_path_factory.mktemp("site"))


# A Sphinx role as it would show in a page, and an autorefs link that did not resolve
# (autorefs leaves ``[`name`][]`` / ``[`text`][id]`` as text when no page renders ``id``).
SPHINX_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|obj|exc|const|ref):`")
UNRESOLVED_REF = re.compile(r"(?<![\w`\]])\[[^\[\]]+\]\[[\w.]*\]")
# TeX that a reader would see raw: its delimiters, or a control word, outside the math.
RAW_TEX = re.compile(r"\\[()\[\]]|\$\$|\\[a-zA-Z]+")
CDN = re.compile(r"https?://(cdn|[\w.-]*(unpkg|jsdelivr|cdnjs|cloudflare|googleapis)\b)")
MATH_PAGES = sorted(
    p.relative_to(DOCS).with_suffix(".html") for p in (DOCS / "derivations").glob("*.md")
)
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}


class PageText(HTMLParser):
    """A page's text as a reader sees it, in three streams.

    ``text``: text outside scripts, styles and math, code in backticks (so that an unresolved
    ``[`name`][]`` reads as written); ``plain``: the same without the code; ``math``: the
    number of math elements, by CSS class; ``tags``: every tag name seen, counted.
    """

    SKIP = {"script", "style", "template"}

    def __init__(self, html: str, math_classes=("arithmatex",)) -> None:
        super().__init__(convert_charrefs=True)
        self.math_classes = set(math_classes)
        self.stack: list[tuple[str, bool, bool]] = []  # (tag, hidden, code)
        self.prose: list[str] = []
        self.plain_prose: list[str] = []
        self.math: Counter = Counter()
        self.tags: Counter = Counter()
        self.feed(html)
        self.close()

    @property
    def text(self) -> str:
        return "".join(self.prose)

    @property
    def plain(self) -> str:
        return "".join(self.plain_prose)

    def handle_starttag(self, tag, attrs):
        self.tags[tag] += 1
        if tag in VOID:
            return
        classes = set((dict(attrs).get("class") or "").split())
        hidden = bool(self.stack and self.stack[-1][1])
        math = classes & self.math_classes or tag.startswith("mjx-")
        for name in classes & self.math_classes:
            self.math[name] += 1
        hidden = hidden or tag in self.SKIP or bool(math)
        code = tag in ("code", "pre") or bool(self.stack and self.stack[-1][2])
        if tag in ("code", "pre") and not hidden and not (self.stack and self.stack[-1][2]):
            self.prose.append("`")
        self.stack.append((tag, hidden, code))

    def handle_endtag(self, tag):
        if tag in VOID or tag not in {t for t, _, _ in self.stack}:
            return
        while self.stack:
            name, hidden, code = self.stack.pop()
            outer_code = bool(self.stack and self.stack[-1][2])
            if name in ("code", "pre") and not hidden and not outer_code:
                self.prose.append("`")
            if name == tag:
                break

    def handle_data(self, data):
        if self.stack and self.stack[-1][1]:
            return
        self.prose.append(data)
        if not (self.stack and self.stack[-1][2]):
            self.plain_prose.append(data)


def assert_reads_clean(name, page: PageText) -> None:
    """No Sphinx role, unresolved cross-reference or raw TeX (outside code) in a page's text."""
    for what, pattern, text in [
        ("Sphinx role", SPHINX_ROLE, page.text),
        ("unresolved reference", UNRESOLVED_REF, page.text),
        ("raw TeX", RAW_TEX, page.plain),
    ]:
        found = pattern.search(text)
        context = text[max(found.start() - 60, 0) : found.end() + 60] if found else ""
        assert found is None, f"{name}: {what} {found[0]!r} in {' '.join(context.split())!r}"


@needs_docs_extra
def test_mkdocs_build_strict(site):
    assert (site / "tutorial.html").exists()
    api = (site / "api" / "linear.html").read_text()
    assert 'id="pyrovae.models.factor_analysis.FactorAnalysis"' in api


@needs_docs_extra
def test_a_warning_fails_the_build(tmp_path):
    """The build test can fail: a copy of the docs with one broken link (a warning, which
    ``--strict`` makes an error) does not build."""
    copy = tmp_path / "repo"
    shutil.copytree(DOCS, copy / "docs")
    config = (REPO / "mkdocs.yml").read_text()
    # The API pages read the code from the checkout, not from the copy.
    config = config.replace("paths: [.]", f"paths: [{json.dumps(str(REPO))}]")
    assert str(REPO) in config
    (copy / "mkdocs.yml").write_text(config)
    faq = copy / "docs" / "faq.md"
    faq.write_text(faq.read_text() + "\nSee [a page that is not there](no-such-page.md).\n")
    with pytest.raises(AssertionError, match="no-such-page.md"):
        build_site(tmp_path / "site", copy / "mkdocs.yml")


def nav_pages(nav) -> set[str]:
    """Every page file named in ``mkdocs.yml``'s ``nav`` (nested sections included)."""
    if isinstance(nav, str):
        return {nav}
    if isinstance(nav, dict):
        return set().union(*(nav_pages(v) for v in nav.values()))
    return set().union(*(nav_pages(v) for v in nav))


def test_every_page_is_reachable_from_the_index():
    """Each ``docs/**/*.md`` page (not the folder's README) is in the nav or linked from the
    index, so no page is built that a reader cannot find."""
    yaml = pytest.importorskip("yaml")  # mkdocs' dependency
    config = yaml.load((REPO / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)
    in_nav = nav_pages(config["nav"])
    index = (DOCS / "index.md").read_text()
    linked = {link.split("#")[0] for link in re.findall(r"\]\(([\w./-]+\.md)(?:#[\w-]*)?\)", index)}
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")} - {"README.md"}
    assert in_nav <= pages, f"nav names missing pages: {sorted(in_nav - pages)}"
    assert pages <= in_nav | linked, f"unreachable pages: {sorted(pages - in_nav - linked)}"
    assert linked <= pages, f"index links missing pages: {sorted(linked - pages)}"


def test_index_lists_every_model_and_use():
    """The index's model table and its "Where to start" list name SketchRNN, the SMILES VAE
    and imputation (issue 25)."""
    index = (DOCS / "index.md").read_text()
    tables, start = index.split("## Where to start")
    start = start.split("\n## ")[0]
    table_rows = "\n".join(line for line in tables.splitlines() if line.startswith("|"))
    for name in ("SketchRNN", "SMILES VAE", "Imputation"):
        assert name in table_rows, f"{name} missing from the index's tables"
        assert name.lower() in start.lower(), f"{name} missing from 'Where to start'"


def test_load_checkpoint_is_shown_in_readme_and_tutorial():
    assert "pyrovae.load_checkpoint(" in (REPO / "README.md").read_text()
    # The tutorial shows the call from its tested code file.
    assert "pyrovae.load_checkpoint(" in (TUTORIAL_CODE / "checkpoints.py").read_text()
    assert '--8<-- "checkpoints.py:checkpoints"' in (DOCS / "tutorial.md").read_text()


def test_checkpoints_tutorial():
    out = run_tutorial("checkpoints")
    # The reloaded model is a new object with the trained weights: the same encodings (its
    # encoder is deterministic and runs the same float32 operations: exact).
    assert out["reloaded"] is not out["model"] and not out["reloaded"].training
    assert torch.equal(out["codes"], out["reloaded_codes"])


@needs_docs_extra
def test_site_loads_nothing_from_a_cdn(site):
    """Issue #17: every script, stylesheet and font a page uses is in the site itself."""
    pages = sorted(site.rglob("*.html"))
    assert len(pages) > 10
    for page in pages:
        html = page.read_text()
        assert not CDN.search(html), f"{page.relative_to(site)} names a CDN: {CDN.search(html)[0]}"
        for ref in re.findall(r'<(?:script|link)\b[^>]*?(?:src|href)="([^"]+)"', html):
            if ref.startswith(("http:", "https:", "//")):
                continue  # a plain link (<link rel="canonical">), checked for CDNs above
            path = ref.split("?")[0].split("#")[0]
            # 404.html is served from any folder, so its links start at the site's root.
            target = site / path.lstrip("/") if path.startswith("/") else page.parent / path
            assert target.is_file(), f"{page.relative_to(site)} loads {ref}, which is missing"
    mathjax = site / "assets" / "mathjax"
    assert (mathjax / "tex-mml-chtml.js").stat().st_size > 500_000  # MathJax's TeX bundle
    assert len(list((mathjax / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff"))) > 10
    assert (mathjax / "input" / "tex" / "extensions" / "cancel.js").is_file()  # autoloadable
    assert ".highlight .k" in (site / "css" / "pygments.css").read_text()
    for name in MATH_PAGES:
        assert '"../assets/mathjax/tex-mml-chtml.js"' in (site / name).read_text(), name


@needs_docs_extra
def test_pages_show_no_raw_tex_and_no_sphinx_roles(site):
    """The built HTML hands every formula to MathJax and links every cross-reference.

    What MathJax typesets is inside ``arithmatex`` elements; any TeX outside them (a formula
    that arithmatex did not pick up) would reach the reader raw. Docstrings link with autorefs'
    syntax; a Sphinx role, or a reference to an object no API page renders, shows as text.
    """
    for page in sorted(site.rglob("*.html")):
        name = page.relative_to(site)
        assert_reads_clean(name, PageText(page.read_text()))
    for name in [*MATH_PAGES, Path("faq.html"), Path("tutorial.html")]:
        assert PageText((site / name).read_text()).math["arithmatex"] > 0, name
