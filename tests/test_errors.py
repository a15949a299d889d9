"""Every bad input in docs/cli.md's tables gives exactly the message the table shows.

The tables are the documentation a user reads; these tests run each row (the ``pyrovae`` rows
in-process through :func:`pyrovae.cli.main`, one of them also as a subprocess for the exit
status) and compare the message word for word, so the page cannot drift from the code.
"""

import contextlib
import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO

import pyrovae.cli._common as common
from pyrovae import save_checkpoint
from pyrovae.cli import main
from pyrovae.data import DynamicBinarized, binarize, load_dataset
from pyrovae.models.vae import VAE

CLI_PAGE = REPO / "docs" / "cli.md"
ROW = re.compile(r"^\| (.+?) \| `(.+?)` \| `(.+)` \|$")


def table_rows(prefix: str) -> list[tuple[str, str, str]]:
    rows = [ROW.match(line) for line in CLI_PAGE.read_text().splitlines()]
    return [m.groups() for m in rows if m and m.group(2).startswith(prefix)]


COMMAND_ROWS = table_rows("pyrovae ")
PYTHON_ROWS = table_rows(("load_dataset", "DynamicBinarized"))


def test_the_tables_are_read():
    assert len(COMMAND_ROWS) >= 20 and len(PYTHON_ROWS) == 4


@pytest.fixture
def places(tmp_path, monkeypatch):
    """The tables' placeholders as real paths (and the out-of-memory and read-only faults)."""
    file = tmp_path / "a_file"
    file.write_text("not a folder")
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(run / "last.pt", VAE(data_dim=64, latent_dim=2, hidden_sizes=[8]))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage, not a zip archive")
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)
    monkeypatch.chdir(tmp_path)  # default --out folders land here, never in the repository
    yield_places = {"FILE": file, "RUN": run, "READONLY": readonly, "BAD": bad,
                    "MISSING": tmp_path / "missing.pt", "TORCH": torch.__version__}
    if os.geteuid() == 0:  # root writes anywhere: make the write test fail as it would
        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        real = common.tempfile.NamedTemporaryFile

        def refuse_in_readonly(*args, dir=None, **kwargs):
            return refuse() if str(dir).startswith(str(readonly)) else real(*args, dir=dir,
                                                                               **kwargs)

        monkeypatch.setattr(common.tempfile, "NamedTemporaryFile", refuse_in_readonly)

    def out_of_memory(*args, **kwargs):
        # What the CPU allocator raises for --num-particles 1000000000 (a real run reaches it
        # after ~90 s on the 2-core test machine), as Pyro re-raises it with the trace's shapes.
        try:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator:"
                               " can't allocate memory: you tried to allocate 57480000000000 bytes")
        except RuntimeError as err:
            raise RuntimeError(f"{err}\n   Trace Shapes:") from err

    monkeypatch.setattr("pyrovae.runs.ppca.fit", out_of_memory)
    empty = tmp_path / "empty"
    empty.mkdir()
    yield {**yield_places, "DIR": empty}
    readonly.chmod(0o755)


def substitute(text: str, places: dict) -> str:
    return re.sub(r"\b(FILE|DIR|RUN|READONLY|MISSING|BAD|TORCH)\b",
                  lambda m: str(places[m.group(1)]), text)


def run_in_process(argv: list[str], capsys) -> tuple[int, str]:
    try:
        status = main(argv)
    except SystemExit as stop:  # argparse
        status = stop.code
    return status, capsys.readouterr().err.strip()


@pytest.mark.parametrize("what, command, message", COMMAND_ROWS, ids=[r[0] for r in COMMAND_ROWS])
def test_command_line_error_is_the_documented_line(what, command, message, places, capsys):
    if "--device cuda" in command and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    argv = shlex.split(substitute(command, places))[1:]
    status, err = run_in_process(argv, capsys)
    expected = substitute(message, places)
    assert status == 2
    assert "\n" not in err, err
    if expected.endswith("..."):
        assert err.startswith(expected[:-3]), err
    else:
        assert err == expected


@pytest.mark.parametrize("what, call, message", PYTHON_ROWS, ids=[r[0] for r in PYTHON_ROWS])
def test_library_error_is_the_documented_message(what, call, message):
    if "cuda" in call and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    x = torch.linspace(0, 1, 12).reshape(3, 4)
    namespace = dict(x=x, x_uint8=(255 * x).to(torch.uint8), load_dataset=load_dataset,
                     DynamicBinarized=DynamicBinarized)
    with pytest.raises(ValueError) as raised:
        eval(call, namespace)
    assert str(raised.value) == substitute(message, {"TORCH": torch.__version__})


def test_exit_status_and_one_line_from_the_installed_command(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pyrovae.cli", "vae", "train", "--dataset",
                             "digits", "--device", "no-such-device", "--out", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "pyrovae: error: unknown --device 'no-such-device'; use cpu, cuda or cuda:N"
    ]


def test_out_checked_before_training(tmp_path, monkeypatch, capsys):
    """A bad --out costs nothing: the data are never loaded."""
    monkeypatch.setattr("pyrovae.cli.vae.image_set", lambda *a, **k: pytest.fail("loaded data"))
    (tmp_path / "f").write_text("")
    status, err = run_in_process(["vae", "train", "--out", str(tmp_path / "f")], capsys)
    assert status == 2 and "is a file" in err


def test_out_of_memory_is_recognised_through_pyro_and_cuda():
    plain = RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 1 bytes")
    assert common.is_out_of_memory(plain)
    wrapped = RuntimeError("shapes")
    wrapped.__cause__ = plain
    assert common.is_out_of_memory(wrapped)
    assert common.is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert not common.is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


@pytest.mark.parametrize("option", [dict(batch_size=0), dict(epochs=0), dict(eval_every=0)])
def test_compare_ppca_refuses_zero_rather_than_meaning_all(option):
    from pyrovae.runs.ppca import compare_ppca

    with pytest.raises(ValueError, match="batch_size must be a positive|must be >= 1"):
        compare_ppca(**{"epochs": 1, **option})


# ------------------------------------------------------------------- data checks (library)
def test_binarize_and_dynamic_binarized_accept_probabilities_only():
    x = torch.rand(5, 3)
    assert torch.equal(DynamicBinarized(x, 0).for_epoch(0)[0], binarize(x, _epoch_seed(0, 0)))
    for bad in [x + 1, -x, torch.full((2, 2), float("nan"))]:
        with pytest.raises(ValueError):
            DynamicBinarized(bad, 0)
        with pytest.raises(ValueError):
            binarize(bad, 0)
    with pytest.raises(ValueError, match="NumPy"):
        binarize(np.zeros((2, 2), dtype=np.float32), 0)


def _epoch_seed(seed, epoch):
    from pyrovae.data.transforms import epoch_seed

    return epoch_seed(seed, epoch)


# ------------------------------------------------------------------- experiments' run folders
def test_experiment_run_folder_refuses_other_options_and_force_new_moves_it_aside(tmp_path):
    from experiments.common import RUN_OPTIONS_FILE, guard_run_folder

    out = tmp_path / "run"
    guard_run_folder(out, {"epochs": 3, "lr": 0.1, "device": "cpu", "out": out})
    (out / "metrics.json").write_text("{}")
    # identical options (the device may change): go on, resuming what is there
    guard_run_folder(out, {"epochs": 3, "lr": 0.1, "device": "cuda", "out": out})
    assert (out / "metrics.json").exists()
    with pytest.raises(SystemExit) as stop:
        guard_run_folder(out, {"epochs": 5, "lr": 0.1, "out": out})
    assert str(stop.value) == (
        f"error: --out {out} holds a run started with other options (epochs: 3 -> 5); re-run "
        "with its options to resume it, choose another --out, or pass --force-new to start "
        "afresh (the old folder is moved aside)"
    )
    with contextlib.redirect_stderr(None):
        guard_run_folder(out, {"epochs": 5, "lr": 0.1, "out": out}, force_new=True)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(aside) == 1 and (aside[0] / "metrics.json").exists()
    assert not (out / "metrics.json").exists()
    assert json.loads((out / RUN_OPTIONS_FILE).read_text())["options"] == {"epochs": 5, "lr": 0.1}


def test_experiment_script_refuses_a_changed_rerun(tmp_path):
    """End to end through a script's own parser (start_run), before any training."""
    from experiments.common import add_run_arguments, start_run

    def parse(*argv):
        import argparse

        parser = argparse.ArgumentParser()
        parser.add_argument("--epochs", type=int, default=3)
        add_run_arguments(parser, out=str(tmp_path / "x"))
        return parser.parse_args(list(argv))

    start_run(parse("--device", "cpu"))
    start_run(parse("--device", "cpu"))  # same options: resumes
    with pytest.raises(SystemExit, match=r"epochs: 3 -> 4"):
        start_run(parse("--device", "cpu", "--epochs", "4"))
