"""docs/architecture.md is true to the code: every room's imports keep to its "never does"
column, and the page's "Adding a model" example runs through both front ends."""

import ast
import re
import sys
import types

import pyro
import pytest
import torch
from conftest import REPO
from pyro.infer import Trace_ELBO

PAGE = REPO / "docs" / "architecture.md"
ROW = re.compile(r"^\| `([^`]+)`[^|]* \| .+ \| (.+) \|$")
FORBIDDEN = re.compile(r"import ((?:`[\w.]+`(?:, | or | and )?)+)")


def never_imports() -> dict[str, list[str]]:
    """Room folder -> the modules its "never does" cell says it never imports."""
    rules = {}
    for line in PAGE.read_text().splitlines():
        match = ROW.match(line)
        found = match and FORBIDDEN.search(match.group(2))
        if found:
            room = match.group(1).replace("<group>/", "")
            rules[room] = re.findall(r"`([\w.]+)`", found.group(1))
    return rules


def module_level(tree: ast.Module):
    """The statements run when the module is imported: not those inside functions (a lazy
    import inside a function is the page's stated exception)."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        yield node
        todo.extend(ast.iter_child_nodes(node))


def imports_of(path) -> set[str]:
    """The absolute module names a file imports when it is imported (relative ones resolved)."""
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    names = set()
    for node in module_level(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def test_the_rules_are_read():
    rules = never_imports()
    assert rules["experiments/"] == ["pyrovae.cli"]
    assert {"pyrovae.runs", "pyrovae.cli"} <= set(rules["pyrovae/models/"])
    assert len(rules) >= 8


def test_imports_of_resolves_relative_imports(tmp_path):
    assert imports_of(REPO / "pyrovae" / "runs" / "m2.py") >= {"pyrovae.runs.data",
                                                               "pyrovae.models.m2.M2"}


@pytest.mark.parametrize("room, forbidden", sorted(never_imports().items()))
def test_a_room_never_imports_what_the_page_says(room, forbidden):
    offences = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in sorted((REPO / room).rglob("*.py")) for name in imports_of(path)
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    ]
    assert not offences, offences


# ------------------------------------------------------------------ the "Adding a model" example
@pytest.fixture
def beta_vae():
    """The page's example, run as the module ``beta_vae_example``; unregistered afterwards."""
    from pyrovae.runs import vae as family

    section = PAGE.read_text().split("## Adding a model", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    module = types.ModuleType("beta_vae_example")
    sys.modules[module.__name__] = module
    exec(compile(code, str(PAGE), "exec"), module.__dict__)
    yield module
    family.MODELS.pop("beta_vae")
    del sys.modules[module.__name__]


def test_a_model_added_as_the_page_shows_reaches_both_front_ends(beta_vae, tmp_path, capsys):
    import json

    from experiments.vae.common import make_vae, script_parser
    from pyrovae.cli import main

    out = tmp_path / "run"
    assert main(["-q", "vae", "train", "--model", "beta_vae", "--beta", "2", "--dataset",
                 "digits", "--train-size", "100", "--test-size", "20", "--epochs", "1",
                 "--hidden-sizes", "16", "--latent-dim", "2", "--out", str(out)]) == 0
    options = json.loads((out / "options.json").read_text())
    assert (options["model"], options["beta"]) == ("beta_vae", 2.0)

    args = script_parser("", out=str(tmp_path / "script"), epochs=1).parse_args(
        ["--dataset", "digits", "--model", "beta_vae", "--beta", "3", "--train-size", "100",
         "--test-size", "20", "--hidden-sizes", "16"])
    args.device = torch.device("cpu")
    from experiments.vae.common import data_from_args

    data = data_from_args(args)
    model = make_vae(args, data, latent_dim=2)
    assert isinstance(model, beta_vae.BetaVAE) and model.config["beta"] == 3.0

    # The weight reached the objective: with the same draw of z the loss is linear in beta,
    # loss(beta) = reconstruction + beta * KL estimate, with a nonzero KL.
    def loss(beta: float) -> float:
        model.beta = beta
        pyro.set_rng_seed(0)
        return Trace_ELBO().loss(model.model, model.guide, data.test_x)

    one, two, three = loss(1.0), loss(2.0), loss(3.0)
    assert three - two == pytest.approx(two - one, rel=1e-4) and abs(two - one) > 1e-3
