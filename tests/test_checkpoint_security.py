"""Loading a checkpoint never runs code from it (issue 22).

Two kinds of crafted file, each offered to every entry point that opens a checkpoint (the
Python API, ``fit(resume=...)`` and every ``pyrovae`` subcommand that reads one):

* a pickle whose ``__reduce__`` would call ``open(MARKER, "w")`` when unpickled, as a
  ``torch.save`` zip archive and as a bare pickle;
* a well-formed checkpoint without any pickled object that names ``subprocess.run`` or
  ``os.system`` as its ``model_class``, with a command that would create the marker as its
  ``model_config``, and a recomputed, valid sha256.

Each must end in a one-line error naming the file, and the marker file must not exist.
"""

import json
import os
import pickle
import subprocess
import sys

import pytest
import torch
from conftest import REPO

import pyrovae
from pyrovae.cli import main
from pyrovae.infer import CheckpointError, fit, read_checkpoint
from pyrovae.infer.checkpoint import payload_digest
from pyrovae.models import PPCA, VAE


class WritesMarker:
    """Unpickling this object calls ``open(path, "w")``: the file appearing proves code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def options(family="vae"):
    """What ``pyrovae FAMILY train`` stores, so that the CLI's own checks let the file through."""
    if family == "m2":
        return {"family": "m2", "dataset": "digits", "n_labelled": 50, "n_validation": 200,
                "limit": None, "latent_dim": 2, "hidden_sizes": [8], "arch": "mlp",
                "classifier_arch": "mlp", "activation": "softplus", "alpha_factor": 0.1,
                "epochs": 1, "batch_size": 100, "labelled_batch_size": 50, "lr": 1e-3, "seed": 0,
                "devices": 1, "num_nodes": 1}
    return {"family": family, "dataset": "digits", "latent_dim": 2, "hidden_sizes": [8],
            "arch": "mlp", "activation": "relu", "likelihood": "bernoulli", "sigma": 0.1,
            "objective": "elbo", "num_particles": 1, "epochs": 1, "batch_size": 100, "lr": 1e-3,
            "train_size": 50, "test_size": 20, "eval_every": 1, "seed": 0, "image_size": 64,
            "image_shape": [8, 8], "devices": 1, "num_nodes": 1}


def craft(kind, path, marker):
    """Write the crafted file ``kind`` at ``path``; running its code would create ``marker``."""
    base = {"format": 2, "fit_config": {"user": options()}, "epoch": 1, "step": 1,
            "step_in_epoch": 0, "model_state": {}}
    if kind == "reduce_zip":
        torch.save({**base, "model_config": {"x": WritesMarker(marker)}}, path)
    elif kind == "reduce_pickle":
        with open(path, "wb") as f:
            pickle.dump({**base, "rng_state": WritesMarker(marker)}, f, protocol=2)
    else:
        name, config = {
            "subprocess_run": ("subprocess.run", {"args": ["touch", str(marker)]}),
            "os_system": ("os.system", {"command": f"touch {marker}"}),
        }[kind]
        payload = {**base, "model_class": name, "model_config": config}
        payload["sha256"] = payload_digest(payload)  # anyone can recompute a digest
        torch.save(payload, path)
    return path


KINDS = ["reduce_zip", "reduce_pickle", "subprocess_run", "os_system"]


@pytest.fixture
def crafted(tmp_path, request):
    marker = tmp_path / "code_ran"
    path = craft(request.param, tmp_path / "evil.pt", marker)
    yield path, marker
    assert not marker.exists(), "loading the file ran its code"


@pytest.mark.parametrize("crafted", KINDS, indirect=True)
def test_load_checkpoint_runs_nothing(crafted):
    path, _ = crafted
    with pytest.raises(CheckpointError) as caught:
        pyrovae.load_checkpoint(path)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    assert "never loads" in message or "not one of pyrovae's models" in message


@pytest.mark.parametrize("crafted", ["reduce_zip", "reduce_pickle"], indirect=True)
def test_read_checkpoint_refuses_pickled_code_before_the_digest(crafted):
    path, _ = crafted
    with pytest.raises(CheckpointError, match="holds a pickled .*never loads"):
        read_checkpoint(path)


@pytest.mark.parametrize("crafted", KINDS, indirect=True)
def test_fit_resume_from_a_crafted_file_runs_nothing(crafted):
    path, _ = crafted
    with pytest.raises(ValueError) as caught:  # CheckpointError, or a refused configuration
        fit(PPCA(3, 1), torch.randn(20, 3), epochs=1, batch_size=10, resume=path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def commands(path, tmp_path):
    """Every subcommand that opens a checkpoint, on ``path``."""
    run = tmp_path / "run"
    return {
        "vae evaluate": ["vae", "evaluate", "--checkpoint", str(path), "--num-samples", "0"],
        "vae sample": ["vae", "sample", "--checkpoint", str(path), "--out",
                       str(tmp_path / "s.png")],
        "vae resume": ["vae", "resume", "--out", str(run)],
        "m2 evaluate": ["m2", "evaluate", "--checkpoint", str(path), "--num-samples", "0"],
        "m2 sample": ["m2", "sample", "--checkpoint", str(path), "--out",
                      str(tmp_path / "s.png")],
        "m2 resume": ["m2", "resume", "--out", str(run)],
        "impute": ["impute", "--checkpoint", str(path), "--num-images", "2", "--num-samples", "2",
                   "--out", str(tmp_path / "impute")],
    }


COMMANDS = list(commands("P", REPO))


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("crafted", KINDS, indirect=True)
def test_every_subcommand_refuses_a_crafted_checkpoint_in_one_line(crafted, command, tmp_path,
                                                                    capsys, monkeypatch):
    path, _ = crafted
    family = command.split()[0]
    run = tmp_path / "run"
    run.mkdir()
    (run / "options.json").write_text(json.dumps(options(family)))
    (run / "last.pt").write_bytes(path.read_bytes())
    monkeypatch.setenv("PYROVAE_DATA", str(tmp_path / "no-data"))  # digits is bundled
    argv = ["-q", *commands(path, tmp_path)[command], "--device", "cpu"]
    try:
        status = main(argv)
    except SystemExit as stop:
        status = stop.code
    err = capsys.readouterr().err.strip()
    assert status == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("pyrovae: error: "), err
    shown = run / "last.pt" if command.endswith("resume") else path
    assert str(shown) in err


def test_the_installed_command_runs_nothing_and_prints_one_line(tmp_path):
    marker = tmp_path / "code_ran"
    path = craft("reduce_zip", tmp_path / "evil.pt", marker)
    result = subprocess.run(
        [sys.executable, "-m", "pyrovae.cli", "vae", "sample", "--checkpoint", str(path),
         "--device", "cpu", "--out", str(tmp_path / "s.png")],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"pyrovae: error: checkpoint {path} holds a pickled {open.__module__}.open, which "
        "pyrovae never loads (loading it could run code): a pyrovae checkpoint holds only "
        "tensors, numbers, strings and containers"
    ]
    assert not marker.exists()


def test_own_classes_are_passed_in_python_never_imported_by_name(tmp_path):
    class Doubled(PPCA):
        pass

    model = Doubled(3, 1)
    model.config = {"data_dim": 3, "latent_dim": 1}
    path = pyrovae.save_checkpoint(tmp_path / "own.pt", model)
    with pytest.raises(CheckpointError) as caught:
        pyrovae.load_checkpoint(path)
    assert str(caught.value) == (
        f"checkpoint {path} names the model class '{read_checkpoint(path)['model_class']}', "
        "which is not one of pyrovae's models: if it is your own class, pass it as "
        "load_checkpoint(path, model_classes=[YourModel])"
    )
    loaded = pyrovae.load_checkpoint(path, model_classes=[Doubled])
    assert type(loaded) is Doubled
    assert torch.equal(loaded.W, model.W)


def test_a_saved_checkpoint_holds_plain_values_only(tmp_path):
    """What torch's own loader lists as needing trust: nothing, for a trained run's file."""
    history = fit(VAE(4, 2, hidden_sizes=[3]), torch.bernoulli(torch.full((20, 4), 0.5)),
                  epochs=1, batch_size=10, checkpoint_dir=tmp_path)
    get_unsafe_globals_in_checkpoint = pytest.importorskip(
        "torch.serialization").__dict__.get("get_unsafe_globals_in_checkpoint")
    if get_unsafe_globals_in_checkpoint is None:
        pytest.skip("torch < 2.5 cannot list a checkpoint's globals")
    assert get_unsafe_globals_in_checkpoint(history.last_checkpoint) == []
    with pytest.raises(TypeError, match=r"config\['when'\] is a datetime.date"):
        import datetime

        pyrovae.save_checkpoint(tmp_path / "x.pt", None, config={"when": datetime.date.today()})


EXPERIMENTS = [
    ("experiments.vae.evaluate", "--checkpoints"),
    ("experiments.uses.denoise", "--checkpoint"),
    ("experiments.uses.impute", "--checkpoint"),
    ("experiments.smiles.evaluate", "--checkpoint"),
    ("experiments.m2.figures", "--checkpoint"),
    ("experiments.m2.m1_baseline", "--m1"),
]


@pytest.mark.slow
@pytest.mark.parametrize("script, option", EXPERIMENTS, ids=[e[0] for e in EXPERIMENTS])
def test_experiment_scripts_run_nothing_from_a_checkpoint(script, option, tmp_path):
    """The scripts load through pyrovae.load_checkpoint: refused before anything is called
    (their error is the library's CheckpointError; its one-line form is the scripts' concern)."""
    marker = tmp_path / "code_ran"
    path = craft("reduce_zip", tmp_path / "evil.pt", marker)
    result = subprocess.run(
        [sys.executable, "-m", script, option, str(path), "--out", str(tmp_path / "out"),
         "--device", "cpu"],
        capture_output=True, text=True, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode != 0
    assert f"checkpoint {path} holds a pickled" in result.stderr
    assert not marker.exists()


def test_a_param_store_checkpoint_is_plain_and_resumes(tmp_path):
    """Model and guide given as functions: the param store's constraints are stored by class
    name and rebuilt from torch's and Pyro's constraint modules only."""
    import pyro
    import pyro.distributions as dist
    from torch.distributions import constraints

    from pyrovae.infer.checkpoint import CONSTRAINT_MARKER, param_store_state

    x = torch.randn(40, 2) + 3.0

    def model(x, subsample=None):
        loc = pyro.param("loc", torch.zeros(2))
        scale = pyro.param("scale", torch.ones(2), constraint=constraints.positive)
        with pyro.plate("data", x.shape[0], subsample=subsample):
            pyro.sample("x", dist.Normal(loc, scale).to_event(1), obs=x if subsample is None
                        else x[subsample])

    def guide(x, subsample=None):
        pass

    fit(model, x, guide=guide, epochs=2, batch_size=20, lr=0.05, checkpoint_dir=tmp_path)
    payload = read_checkpoint(tmp_path / "last.pt")
    assert payload["param_store"]["constraints"]["scale"][CONSTRAINT_MARKER].endswith(
        "_GreaterThan")
    state = param_store_state(payload)
    assert state["constraints"]["scale"].lower_bound == 0.0
    pyro.clear_param_store()
    fit(model, x, guide=guide, epochs=3, batch_size=20, lr=0.05, checkpoint_dir=tmp_path,
        resume=True)
    pyro.clear_param_store()
    fit(model, x, guide=guide, epochs=3, batch_size=20, lr=0.05,
        checkpoint_dir=tmp_path / "straight")
    resumed, straight = (read_checkpoint(p / "last.pt") for p in (tmp_path, tmp_path / "straight"))
    assert resumed["epoch"] == 3
    for name, value in straight["param_store"]["params"].items():  # resumed exactly
        assert torch.equal(resumed["param_store"]["params"][name], value), name

    forged = {**payload, "param_store": {"params": {}, "constraints": {
        "scale": {CONSTRAINT_MARKER: "os.system", "attributes": {}}}}}
    with pytest.raises(CheckpointError, match="'os.system', which is not one of torch's"):
        param_store_state(forged)
