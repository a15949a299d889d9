"""MkDocs hook: put every asset a page needs into the site itself, so the docs work offline.

* MathJax 3 (the same renderer the pages used from a CDN before) is copied from the PyPI
  package ``django-static-mathjax`` (MathJax's own ``es5`` build, no Django needed) to
  ``assets/mathjax/``: the TeX-to-HTML bundle, its fonts, the TeX extensions it can autoload,
  and the accessibility/menu components.
* The Pygments stylesheet for the build-time highlighted code blocks is written to
  ``css/pygments.css`` (the theme's highlight.js, loaded from a CDN, is switched off in
  ``mkdocs.yml``).

Both are added as virtual files, so ``mkdocs build`` and ``mkdocs serve`` see them alike.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

#: Where the vendored MathJax lands in the site (``mkdocs.yml`` loads its tex-mml-chtml.js).
MATHJAX_DEST = "assets/mathjax"
#: The parts of MathJax's ``es5`` folder a browser can ask for after loading tex-mml-chtml.js.
MATHJAX_PARTS = ("tex-mml-chtml.js", "input", "output/chtml", "a11y", "ui", "sre")
PYGMENTS_CSS = "css/pygments.css"


def mathjax_es5() -> Path:
    """The ``es5`` folder of the installed MathJax package, or a `PluginError` naming the fix."""
    spec = importlib.util.find_spec("mathjax")
    for location in (spec.submodule_search_locations or []) if spec else []:
        es5 = Path(location) / "static" / "mathjax" / "es5"
        if (es5 / "tex-mml-chtml.js").is_file():
            return es5
    raise PluginError(
        "MathJax is not installed: pip install -e '.[docs]' (it brings django-static-mathjax, "
        "whose 'mathjax' package ships MathJax's es5 build)"
    )


def on_files(files: Files, config) -> Files:
    es5 = mathjax_es5()
    license_file = es5.parent / "LICENSE"
    sources = [license_file] if license_file.is_file() else []
    for part in MATHJAX_PARTS:
        path = es5 / part
        found = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        sources.extend(found)
    for source in sources:
        relative = source.relative_to(es5 if source != license_file else es5.parent)
        uri = f"{MATHJAX_DEST}/{relative.as_posix()}"
        files.append(File.generated(config, uri, abs_src_path=str(source)))

    from pygments.formatters import HtmlFormatter

    css = HtmlFormatter(style="default").get_style_defs(".highlight")
    files.append(File.generated(config, PYGMENTS_CSS, content=css))
    return files
