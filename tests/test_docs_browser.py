"""The built docs in a real browser with no network (issue #17): headless Chromium opens each
derivation page, the FAQ, the tutorial and an API page from disk, runs their scripts, and the
rendered DOM must hold typeset math and no raw TeX or Sphinx role.

Offline means: Chromium runs in a new network namespace (``unshare -n``, where the machine
allows it) and, in any case, resolves no host name and sends all traffic to a proxy that does
not exist. So MathJax can only come from the site itself.

Needs Chromium (Debian: ``apt-get install chromium``): skipped with a reason when it is absent.
Slow (a few seconds a page): ``pytest -m slow tests/test_docs_browser.py``.
"""

import shutil
import subprocess
from pathlib import Path

import pytest
from test_docs import MATH_PAGES, PageText, assert_reads_clean, build_site, needs_docs_extra

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)

pytestmark = [
    pytest.mark.slow,
    needs_docs_extra,
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: apt-get install chromium"),
]

# Everything Chromium might fetch goes nowhere: no name resolves, and the proxy is a closed
# port on this machine (file:// pages are not proxied).
OFFLINE_FLAGS = [
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--proxy-server=http://127.0.0.1:9",
    "--proxy-bypass-list=<-loopback>",
]
# MathJax needs well under a second of page time; the budget only bounds a page that hangs.
VIRTUAL_TIME_MS = 20_000


def network_namespace() -> list[str]:
    """``["unshare", "-n"]`` if this machine lets us start a process without a network."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return []
    ok = subprocess.run([unshare, "-n", "true"], capture_output=True, timeout=30).returncode == 0
    return [unshare, "-n"] if ok else []


def chromium(*args: str) -> subprocess.CompletedProcess:
    command = [
        *network_namespace(), CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
        "--no-first-run", "--hide-scrollbars", *OFFLINE_FLAGS, *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def rendered_dom(page: Path) -> str:
    result = chromium(f"--virtual-time-budget={VIRTUAL_TIME_MS}", "--dump-dom", page.as_uri())
    assert result.returncode == 0 and "</html>" in result.stdout, result.stderr[-2000:]
    return result.stdout


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    return build_site(tmp_path_factory.mktemp("site"))


def test_the_browser_is_offline(tmp_path):
    """The set-up itself: a page that loads a script from the web gets nothing."""
    page = tmp_path / "probe.html"
    page.write_text(
        "<html><body><p id=out>offline</p>"
        "<script src='https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js'></script>"
        "<script>if (window.MathJax) document.getElementById('out').textContent = 'online'"
        "</script></body></html>"
    )
    result = chromium(f"--virtual-time-budget={VIRTUAL_TIME_MS}", "--dump-dom", page.as_uri())
    assert ">offline</p>" in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]


@pytest.mark.parametrize(
    "name", [*map(str, MATH_PAGES), "faq.html", "tutorial.html"], ids=lambda n: n
)
def test_math_pages_render_offline(site, name):
    source = PageText((site / name).read_text())
    formulas = source.math["arithmatex"]
    assert formulas > 0  # the page has math to render
    dom = PageText(rendered_dom(site / name), math_classes=("arithmatex",))
    # MathJax typesets each arithmatex element into one <mjx-container>, with no error node.
    assert dom.tags["mjx-container"] == formulas
    assert dom.tags["mjx-merror"] == 0
    assert_reads_clean(name, dom)


def test_api_page_renders_offline(site):
    """An API page: docstrings' references are links, and their math (if any) is typeset."""
    name = "api/infer.html"
    dom_html = rendered_dom(site / name)
    dom = PageText(dom_html)
    assert_reads_clean(name, dom)
    assert dom_html.count('class="autorefs autorefs-internal"') > 5
    assert dom.tags["mjx-container"] == PageText((site / name).read_text()).math["arithmatex"]
