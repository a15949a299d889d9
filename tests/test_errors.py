"""Every bad input in docs/cli.md's tables gives exactly the message the table shows.

The tables are the documentation a user reads; these tests run each row (the ``pyrovae`` rows
in-process through :func:`pyrovae.cli.main`, one of them also as a subprocess for the exit
status) and compare the message word for word, so the page cannot drift from the code.
"""

import contextlib
import errno
import fcntl
import json
import os
import re
import resource
import shlex
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
import torch
from conftest import REPO

import pyrovae.cli._common as common
from pyrovae import save_checkpoint
from pyrovae.cli import main
from pyrovae.data import DynamicBinarized, binarize, load_dataset
from pyrovae.infer import read_checkpoint
from pyrovae.infer.checkpoint import payload_digest
from pyrovae.models import SMILESVAE
from pyrovae.models.vae import VAE

CLI_PAGE = REPO / "docs" / "cli.md"
ROW = re.compile(r"^\| (.+?) \| `(.+?)` \| `(.+)` \|$")


def table_rows(prefix: str) -> list[tuple[str, str, str]]:
    rows = [ROW.match(line) for line in CLI_PAGE.read_text().splitlines()]
    return [m.groups() for m in rows if m and m.group(2).startswith(prefix)]


COMMAND_ROWS = table_rows("pyrovae ")
PYTHON_ROWS = table_rows(("load_dataset", "DynamicBinarized", "SMILESVAE"))
FAULT_ROW = re.compile(r"^\| (.+?) \| (\d+) \| `(.+)` \|$")
FAULT_ROWS = {m.group(1): (int(m.group(2)), m.group(3))
              for m in map(FAULT_ROW.match, CLI_PAGE.read_text().splitlines()) if m}


def test_the_tables_are_read():
    assert len(COMMAND_ROWS) >= 28 and len(PYTHON_ROWS) == 5 and len(FAULT_ROWS) == 6


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

        real = tempfile.NamedTemporaryFile

        def refuse_in_readonly(*args, dir=None, **kwargs):
            return refuse() if str(dir).startswith(str(readonly)) else real(*args, dir=dir,
                                                                               **kwargs)

        monkeypatch.setattr(tempfile, "NamedTemporaryFile", refuse_in_readonly)

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
    best = tmp_path / "best"
    best.mkdir()
    (best / "best.pt").write_bytes((run / "last.pt").read_bytes())
    locked = tmp_path / "locked"
    locked.mkdir()
    holder = open(locked / ".lock", "w")  # noqa: SIM115 - held until the test ends
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as another process's lock would be
    yield {**yield_places, "DIR": empty, "BEST": best, "LOCKED": locked,
           **crafted_places(tmp_path)}
    holder.close()
    readonly.chmod(0o755)


class WritesMarker:
    """Unpickling this calls ``open(path, "w")``: a file that would prove code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def crafted_places(tmp_path) -> dict:
    """``VAERUN`` (a VAE run's options), ``BADRUN`` (a damaged options.json), ``EVIL`` (pickled
    code), ``FOREIGN`` (a valid file naming ``subprocess.run``), ``VAE784`` (an MNIST-sized VAE).
    """
    vae_run, bad_run = tmp_path / "vae_run", tmp_path / "bad_run"
    for folder, text in [(vae_run, '{"family": "vae"}'), (bad_run, "garbage")]:
        folder.mkdir()
        (folder / "options.json").write_text(text)
    evil = tmp_path / "evil.pt"
    torch.save({"format": 2, "x": WritesMarker(tmp_path / "code_ran")}, evil)
    foreign = tmp_path / "foreign.pt"
    payload = {"format": 2, "model_class": "subprocess.run",
               "model_config": {"args": ["touch", str(tmp_path / "code_ran")]},
               "model_state": {}, "fit_config": {"user": {"family": "vae"}}}
    torch.save({**payload, "sha256": payload_digest(payload)}, foreign)
    vae784 = save_checkpoint(tmp_path / "vae784.pt", VAE(784, 2, hidden_sizes=[8]))
    return {"VAERUN": vae_run, "BADRUN": bad_run, "EVIL": evil, "FOREIGN": foreign,
            "VAE784": vae784, "MARKER": tmp_path / "code_ran"}


def substitute(text: str, places: dict) -> str:
    return re.sub(r"\b(FILE|DIR|RUN|BEST|LOCKED|READONLY|MISSING|BAD|TORCH|VAERUN|BADRUN|EVIL|"
                  r"FOREIGN|VAE784|OUT)\b", lambda m: str(places[m.group(1)]), text)


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
    assert not places["MARKER"].exists()  # no crafted checkpoint ran its code


@pytest.mark.parametrize("what, call, message", PYTHON_ROWS, ids=[r[0] for r in PYTHON_ROWS])
def test_library_error_is_the_documented_message(what, call, message):
    if "cuda" in call and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    x = torch.linspace(0, 1, 12).reshape(3, 4)
    namespace = dict(x=x, x_uint8=(255 * x).to(torch.uint8), load_dataset=load_dataset,
                     DynamicBinarized=DynamicBinarized, SMILESVAE=SMILESVAE,
                     vocab=["<pad>", "<bos>", "<eos>", "C", "O"],
                     tokens_with_id_7=torch.tensor([[1, 3, 7, 2]]), lengths=torch.tensor([3]))
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
    monkeypatch.setattr("pyrovae.runs.vae.image_set", lambda *a, **k: pytest.fail("loaded data"))
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
    from pyrovae.runs import RunError
    from pyrovae.runs.folder import RUN_OPTIONS_FILE, guard_run_folder

    out = tmp_path / "run"
    guard_run_folder(out, {"epochs": 3, "lr": 0.1, "device": "cpu", "out": out})
    (out / "metrics.json").write_text("{}")
    # identical options (the device may change): go on, resuming what is there
    guard_run_folder(out, {"epochs": 3, "lr": 0.1, "device": "cuda", "out": out})
    assert (out / "metrics.json").exists()
    with pytest.raises(RunError) as stop:  # a script prints it as "error: ..."
        guard_run_folder(out, {"epochs": 5, "lr": 0.1, "out": out})
    assert str(stop.value) == (
        f"--out {out} holds a run started with other options (epochs: 3 -> 5); re-run "
        "with its options to resume it, choose another --out, or pass --force-new to start "
        "afresh (the old folder is moved aside)"
    )
    with contextlib.redirect_stderr(None):
        guard_run_folder(out, {"epochs": 5, "lr": 0.1, "out": out}, force_new=True)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(aside) == 1 and (aside[0] / "metrics.json").exists()
    assert not (out / "metrics.json").exists()
    assert json.loads((out / RUN_OPTIONS_FILE).read_text())["options"] == {"epochs": 5, "lr": 0.1}


def test_an_option_no_longer_compared_is_ignored_in_the_stored_options_too(tmp_path):
    from pyrovae.runs.folder import NOT_COMPARED, guard_run_folder

    out = tmp_path / "run"
    # a run started when "minutes" was still compared (it is stored) ...
    guard_run_folder(out, {"epochs": 3, "minutes": 5.0}, ignore=frozenset(), lock=False)
    # ... resumes under today's rule with another budget, or none
    assert "minutes" in NOT_COMPARED
    guard_run_folder(out, {"epochs": 3, "minutes": 9.0}, lock=False)
    guard_run_folder(out, {"epochs": 3}, lock=False)


def test_experiment_script_refuses_a_changed_rerun(tmp_path):
    """End to end through a script's own parser (start_run), before any training."""
    from pyrovae.runs.script import add_run_arguments, start_run

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


# ------------------------------------------------------------------- faults while a command runs
# Each row of docs/cli.md's "Faults while a command runs", caused for real.
TINY_VAE = ["vae", "train", "--dataset", "digits", "--latent-dim", "2", "--hidden-sizes", "8",
            "--train-size", "100", "--test-size", "20", "--device", "cpu"]


def fault_row(what: str, out) -> tuple[int, str]:
    status, message = FAULT_ROWS[what]
    return status, substitute(message, {"OUT": out})


def command(*argv) -> list[str]:
    return [sys.executable, "-m", "pyrovae.cli", "-q", *map(str, argv)]


def subprocess_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def test_ctrl_c_after_the_first_checkpoint_says_they_are_intact_and_how_to_resume(tmp_path):
    out = tmp_path / "run"
    # A shell gives the command Ctrl-C's default action; the test process may ignore SIGINT (an
    # earlier test's launcher can leave it so), and an ignored SIGINT is inherited.
    proc = subprocess.Popen(command(*TINY_VAE, "--epochs", "100000", "--out", out),
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env=subprocess_env(),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not (out / "last.pt").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint written"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    status, message = fault_row("Ctrl-C after the first checkpoint", out)
    assert (proc.returncode, err.strip().splitlines()) == (status, [message])
    # The command it names continues the run from the intact checkpoint.
    done = read_checkpoint(out / "last.pt")["epoch"]
    assert main(["-q", "vae", "resume", "--out", str(out), "--epochs", str(done + 1),
                 "--device", "cpu"]) == 0
    assert read_checkpoint(out / "last.pt")["epoch"] == done + 1


def _trained_run(out, epochs=1) -> bytes:
    assert main(["-q", *TINY_VAE, "--epochs", str(epochs), "--out", str(out)]) == 0
    return (out / "last.pt").read_bytes()


def _assert_left_intact(out, before: bytes) -> None:
    assert (out / "last.pt").read_bytes() == before
    assert read_checkpoint(out / "last.pt")["epoch"] == 1
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_a_file_size_limit_while_saving_leaves_the_checkpoint_before(tmp_path):
    out = tmp_path / "run"
    before = _trained_run(out)

    def limit_file_size():  # EFBIG instead of the default SIGXFSZ, which would kill
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) // 2, len(before) // 2))

    result = subprocess.run(command("vae", "resume", "--out", out, "--epochs", "3",
                                    "--device", "cpu"),
                            capture_output=True, text=True, env=subprocess_env(),
                            preexec_fn=limit_file_size)
    status, message = fault_row("a file-size limit (`ulimit -f`) stops the write", out)
    assert (result.returncode, result.stderr.strip().splitlines()) == (status, [message])
    _assert_left_intact(out, before)


@contextlib.contextmanager
def small_tmpfs(path, size: str):
    """A tmpfs of ``size`` mounted at ``path`` (root only; the test skips where it cannot)."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def fill(folder, leave: int) -> None:
    """Write into ``folder`` until its disk is full, then free ``leave`` bytes."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as err:
            assert err.errno == errno.ENOSPC
    os.truncate(filler, filler.stat().st_size - leave)


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.geteuid() != 0,
                    reason="mounting a tmpfs needs root on Linux")
def test_a_full_disk_while_saving_leaves_the_checkpoint_before(tmp_path, capsys):
    with small_tmpfs(tmp_path / "disk", "8m") as disk:
        out = disk / "run"
        before = _trained_run(out)
        assert len(before) > 4 * 8192
        fill(disk, leave=8192)  # room for options.json, not for a checkpoint
        capsys.readouterr()
        status = main(["-q", "vae", "resume", "--out", str(out), "--epochs", "3",
                       "--device", "cpu"])
        err = capsys.readouterr().err.strip()
        expected = fault_row("the disk fills while a checkpoint is written", out)
        assert (status, err.splitlines()) == (expected[0], [expected[1]])
        _assert_left_intact(out, before)


def test_weights_that_overflow_before_the_loss_shows_it_stop_before_the_callbacks(tmp_path,
                                                                                   capsys):
    """One step at lr 1e300: its loss is finite, the weights after it are not; the test-ELBO
    callback must not be the first to meet them (it used to fail in a Pyro constraint check)."""
    out = tmp_path / "run"
    status = main(["-q", *TINY_VAE, "--epochs", "2", "--lr", "1e300", "--out", str(out)])
    expected = fault_row("the weights overflow (`--lr 1e300`) before the loss shows it", out)
    assert (status, capsys.readouterr().err.strip().splitlines()) == (expected[0], [expected[1]])
    assert not (out / "last.pt").exists()  # nothing diverged was saved


def test_resume_to_fewer_epochs_than_done_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    _trained_run(out, epochs=2)
    capsys.readouterr()
    status = main(["-q", "vae", "resume", "--out", str(out), "--epochs", "1", "--device", "cpu"])
    expected = fault_row("`resume --epochs` below the epochs done", out)
    assert (status, capsys.readouterr().err.strip().splitlines()) == (expected[0], [expected[1]])


def test_an_unforeseen_error_is_one_line_and_its_traceback_is_there_with_v(monkeypatch, capsys,
                                                                           tmp_path):
    def broken(*args, **kwargs):
        raise RuntimeError("something pyrovae did not foresee\nsecond line")

    monkeypatch.setattr("pyrovae.runs.vae.image_set", broken)
    argv = [*TINY_VAE, "--out", str(tmp_path / "run")]
    status = main(["-q", *argv])
    expected = fault_row("an error pyrovae did not foresee (`-v` shows its traceback)", "")
    err = capsys.readouterr().err.strip()
    assert status == expected[0] and err.splitlines() == [
        expected[1].replace("...", "something pyrovae did not foresee")]
    with pytest.raises(RuntimeError, match="did not foresee"):
        main(["-v", *argv[:-2], "--out", str(tmp_path / "again")])


def test_vae_resume_of_an_m2_run_names_the_family_found(tmp_path, capsys):
    """The reverse of the table's row (m2 resume of a VAE run): it was a KeyError."""
    (tmp_path / "options.json").write_text('{"family": "m2"}')
    status, err = run_in_process(["vae", "resume", "--out", str(tmp_path)], capsys)
    assert (status, err) == (2, f"pyrovae: error: --out {tmp_path} holds a run of 'pyrovae m2 "
                                f"train', not of 'pyrovae vae train': continue it with 'pyrovae "
                                f"m2 resume --out {tmp_path}'")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a GPU"))])
def test_smiles_ids_outside_the_vocabulary_are_a_data_error_in_training(device):
    """Before the embedding sees them: on a GPU an out-of-range id is a device-side assert,
    which poisons the CUDA context, not an exception."""
    from pyro.infer import Trace_ELBO

    from pyrovae.infer import param_scope
    from pyrovae.models import DataError

    model = SMILESVAE(["<pad>", "<bos>", "<eos>", "C", "O"], latent_dim=2, hidden_size=8,
                      encoder_hidden_size=8, embedding_dim=4).to(device)
    tokens = torch.tensor([[1, 3, 4, 2], [1, 9, 2, 0]], device=device)
    lengths = torch.tensor([3, 2], device=device)
    with pytest.raises(DataError) as caught, param_scope(model):
        Trace_ELBO().loss(model.model, model.guide, tokens, lengths)
    assert str(caught.value).startswith("tokens hold ids 0..9, outside this model's vocabulary")
