"""The headline's ``--recipe burda-compressed``: schedule, held-out selection, resumed runs."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

from pyrovae.infer import BurdaSchedule


def _headline(args, out, recipe="burda-compressed"):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "experiments.vae.headline", "--recipe", recipe,
           "--dataset", "digits", "--eval-examples", "10", "--num-samples", "20",
           "--monitor-examples", "50", "--eval-every", "1", *args, "--out", str(out)]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())["runs"]["iwae"]


def test_recipe_trains_the_compressed_schedule_across_invocations_and_evaluates_the_best(
    tmp_path,
):
    # A budget used up after the first epoch: the run stops unevaluated; the same command
    # resumes it to the last of its 8 epochs (one per stage), then evaluates the epoch with the
    # best held-out bound.
    first = _headline(["--epochs", "8", "--minutes", "1e-9"], tmp_path)
    assert first["epochs"] == 1 and not first["complete"] and "test_subset" not in first
    run = _headline(["--epochs", "8"], tmp_path)
    assert run["recipe"] == "burda-compressed" and run["num_particles"] == 5 and run["complete"]
    curve = run["curve"]
    assert [row["lr"] for row in curve] == pytest.approx(
        [1e-3 * BurdaSchedule(8)(e) for e in range(8)], rel=1e-12)
    bounds = [row["val_bound_k50"] for row in curve]
    assert run["selected_epoch"] == bounds.index(max(bounds))
    # digits: 1437 training images less the 1000 held out, in whole batches of 20 (JIT).
    assert {row["steps"] for row in curve} == {437 // 20}
    assert run["test_subset"]["num_examples"] == 10


def test_even_recipe_holds_each_rate_for_an_eighth_of_the_epochs(tmp_path):
    run = _headline(["--epochs", "16"], tmp_path, recipe="burda-even")
    assert run["recipe"] == "burda-even" and run["complete"]
    lrs = [row["lr"] for row in run["curve"]]
    assert lrs == pytest.approx([1e-3 * 10 ** (-(e // 2) / 7) for e in range(16)], rel=1e-12)
    assert lrs != pytest.approx([1e-3 * BurdaSchedule(16)(e) for e in range(16)], rel=1e-12)
    bounds = [row["val_bound_k50"] for row in run["curve"]]
    assert run["selected_epoch"] == bounds.index(max(bounds))
