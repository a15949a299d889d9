"""The ``pyrovae`` command, run as a user would."""

import json
import subprocess
import sys

import pytest


def run(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "pyrovae.cli", *args], capture_output=True, text=True, env=env
    )


@pytest.mark.parametrize("args", [["--help"], ["ppca", "--help"]])
def test_help(args):
    result = run(*args)
    assert result.returncode == 0 and "usage: pyrovae" in result.stdout


@pytest.mark.parametrize("flag", ["-v", "-q"])
@pytest.mark.parametrize("before", [True, False])
def test_verbosity_before_or_after_the_subcommand(flag, before):
    import logging

    from pyrovae.cli import build_parser

    argv = [flag, "ppca"] if before else ["ppca", flag]
    args = build_parser().parse_args(argv)
    assert args.log_level == (logging.INFO if flag == "-v" else logging.ERROR)
    assert build_parser().parse_args(["ppca"]).log_level == logging.WARNING


def test_ppca_digits_smoke(tmp_path):
    result = run(
        "ppca", "--epochs", "30", "--lr", "0.05", "--latent-dim", "3", "--out", str(tmp_path)
    )
    assert result.returncode == 0, result.stderr
    assert "closed form" in result.stdout and "SVI" in result.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["dataset"] == "digits" and report["n"] == 1437 and report["latent_dim"] == 3
    assert report["svi"]["log_likelihood"] <= report["closed_form"]["log_likelihood"]
    assert report["svi"]["final_elbo"] <= report["svi"]["log_likelihood"] + 1.0
    for name in report["figures"]:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["command"].startswith("pyrovae ppca")


def test_missing_data_is_a_clear_error(tmp_path):
    result = run("ppca", "--dataset", "mnist", "--data-root", str(tmp_path), "--no-download")
    assert result.returncode == 2
    assert "train-images-idx3-ubyte.gz" in result.stderr and str(tmp_path) in result.stderr
