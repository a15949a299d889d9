"""The run layer (``pyrovae.runs``): both front ends build the same data, a run folder is
owned by one process at a time, and a script ends a fault with one line."""

import errno
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO

from pyrovae.cli import main
from pyrovae.infer.trainer import NonFiniteLossError
from pyrovae.runs import folder
from pyrovae.runs import m2 as m2_family
from pyrovae.runs import vae as vae_family
from pyrovae.runs.script import run_script


def options_of(argv: list[str], module, monkeypatch) -> dict:
    """The options ``pyrovae ARGV`` trains with (its ``_fit`` is replaced by a recorder)."""
    seen = {}
    monkeypatch.setattr(module, "_fit", lambda args, out, options, resume: seen.update(options))
    assert main(argv) is None or seen
    return seen


# ------------------------------------------------------------------ one held-out test set
def test_command_line_and_experiments_score_the_same_test_images(tmp_path, monkeypatch):
    """The same data set gives the same binarised test images in ``pyrovae vae train``,
    ``pyrovae m2 train``, the VAE experiments and the M2 experiment, whatever each run's seed
    (they once used seeds 1234 and 20000)."""
    import pyrovae.cli.m2
    import pyrovae.cli.vae
    from experiments.m2.mnist import parse_args as m2_script_args
    from experiments.vae.common import data_from_args, script_parser

    cli_vae = options_of(["vae", "train", "--dataset", "digits", "--seed", "3", "--out",
                          str(tmp_path / "v")], pyrovae.cli.vae, monkeypatch)
    cli_m2 = options_of(["m2", "train", "--dataset", "digits", "--seed", "4", "--out",
                         str(tmp_path / "m")], pyrovae.cli.m2, monkeypatch)
    script = script_parser("VAE", out=str(tmp_path / "s"), epochs=1).parse_args(
        ["--dataset", "digits", "--seed", "5"])
    script.device = torch.device("cpu")
    m2_script = m2_script_args(["--dataset", "digits", "--n-labelled", "50",
                                "--n-validation", "200", "--seeds", "6"])

    by_cli_vae = vae_family.data(cli_vae).test_x
    by_script_vae = data_from_args(script).test_x
    by_cli_m2 = m2_family.data(m2_family.resolve(cli_m2)).x_test
    by_script_m2 = m2_family.data({**vars(m2_script), "n_labelled": 50, "seed": 6}).x_test
    assert set(by_cli_vae.unique().tolist()) == {0.0, 1.0}  # binarised, not grey levels
    for other in (by_script_vae, by_cli_m2, by_script_m2):
        assert torch.equal(by_cli_vae, other)


def test_both_front_ends_build_m2_through_the_same_preset(tmp_path, monkeypatch):
    """``pyrovae m2 train`` and ``experiments.m2.mnist`` with no model options build the same
    M2 (the ``pyrovae`` preset); ``--preset conv_relu`` keeps the experiment's old recipe."""
    import pyrovae.cli.m2
    from experiments.m2.mnist import parse_args as m2_script_args

    cli = m2_family.resolve(options_of(
        ["m2", "train", "--dataset", "digits", "--out", str(tmp_path / "m")],
        pyrovae.cli.m2, monkeypatch))
    script = {**vars(m2_script_args(["--dataset", "digits"])), "n_labelled": 50,
              "n_validation": 200, "seed": 0}
    data = m2_family.data(cli)
    assert m2_family.build(cli, data).config == m2_family.build(script, data).config
    old = m2_family.recipe(vars(m2_script_args(["--preset", "conv_relu"])))
    assert (old.model["activation"], old.model["classifier_arch"], old.epochs) == (
        "relu", "conv", 300)


# ------------------------------------------------------------------ one process per folder
HOLD = ("import sys, time; from pyrovae.runs.folder import lock_run_folder; "
        "lock_run_folder(sys.argv[1]); print('locked', flush=True); time.sleep(600)")


def start_holder(out) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def stop(holder: subprocess.Popen) -> None:
    holder.send_signal(signal.SIGKILL)  # no clean-up runs: only the kernel can release
    holder.wait()
    holder.stdout.close()


def test_a_second_process_is_refused_until_the_first_dies(tmp_path):
    """Two real processes: while one holds the run folder, ``pyrovae vae train`` into it ends
    with one line naming the holder's pid; once the holder is killed (SIGKILL: no clean-up
    runs), the operating system has released the lock and a new run may take the folder."""
    out = tmp_path / "run"
    out.mkdir()
    holder = start_holder(out)
    try:
        second = subprocess.run(
            [sys.executable, "-m", "pyrovae.cli", "vae", "train", "--dataset", "digits",
             "--epochs", "1", "--train-size", "50", "--test-size", "20", "--out", str(out)],
            cwd=REPO, capture_output=True, text=True, timeout=300,
        )
        assert second.returncode == 2
        assert second.stderr.strip().splitlines() == [
            f"pyrovae: error: --out {out} is in use by another process (pid {holder.pid}); "
            "wait for it to finish, or choose another --out"
        ]
        assert not (out / "options.json").exists() and not (out / "last.pt").exists()
    finally:
        stop(holder)
    deadline = time.monotonic() + 10
    while True:  # the kernel drops the lock with the process's last descriptor
        try:
            folder.lock_run_folder(out)
            break
        except folder.RunError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    folder.unlock_run_folder(out)


def test_an_experiment_refuses_a_folder_in_use(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = start_holder(out)
    try:
        script = subprocess.run(
            [sys.executable, "-m", "experiments.m2.mnist", "--dataset", "digits", "--out",
             str(out)], cwd=REPO, capture_output=True, text=True, timeout=300,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    finally:
        stop(holder)
    assert script.returncode == 1
    assert script.stderr.strip().splitlines()[-1] == (
        f"error: --out {out} is in use by another process (pid {holder.pid}); wait for it to "
        "finish, or choose another --out")


@pytest.mark.parametrize("name", ["best.pt", "train.json", "samples.png"])
def test_train_refuses_a_folder_holding_any_file_a_run_writes(tmp_path, name):
    (tmp_path / name).write_text("")
    with pytest.raises(folder.RunError, match=rf"already holds a run \({name}\)"):
        folder.start_run_folder(tmp_path, "vae")
    folder.unlock_run_folder(tmp_path)
    (tmp_path / name).unlink()
    (tmp_path / "options.json").write_text("{}")  # a start that failed: may start again
    assert folder.start_run_folder(tmp_path, "vae") == tmp_path
    folder.unlock_run_folder(tmp_path)


# ------------------------------------------------------------------ one line for a fault
@pytest.mark.parametrize("content", [b"not a checkpoint", None], ids=["crafted", "missing"])
def test_an_experiment_script_refuses_a_bad_checkpoint_in_one_line(tmp_path, content):
    checkpoint = tmp_path / "model.pt"
    if content is not None:
        checkpoint.write_bytes(content)
    script = subprocess.run(
        [sys.executable, "-m", "experiments.vae.evaluate", "--dataset", "digits",
         "--checkpoints", str(checkpoint), "--out", str(tmp_path / "out")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert script.returncode == 2, script.stderr[-2000:]
    [line] = script.stderr.strip().splitlines()
    assert line.startswith("error: ") and str(checkpoint) in line


def _full_disk():
    raise RuntimeError("zip writer failed") from OSError(errno.ENOSPC, "No space left", "x.pt")


def _interrupted():
    raise KeyboardInterrupt


def _diverged():
    raise NonFiniteLossError("the loss is nan at epoch 0")


@pytest.mark.parametrize("main, status, text", [
    (_full_disk, 1, "error: no room on the disk (No space left) while writing x.pt; "),
    (_interrupted, 130, "error: interrupted (Ctrl-C); "),
    (_diverged, 1, "error: the loss is nan at epoch 0; try a lower --lr"),
    (lambda: 3, 3, ""),
])
def test_run_script_ends_a_fault_with_one_line_and_its_status(main, status, text, capsys):
    with pytest.raises(SystemExit) as ended:
        run_script(main)
    err = capsys.readouterr().err
    assert ended.value.code == status
    assert err.startswith(text) and err.count("\n") == (1 if text else 0)


def test_run_script_keeps_the_traceback_of_a_bug():
    with pytest.raises(ZeroDivisionError):
        run_script(lambda: 1 / 0)
