"""Checkpoints: atomic writes, reloading for evaluation, and resuming after kill -9."""

import signal
import subprocess
import sys
import textwrap

import pyro
import pytest
import torch

from pyrovae import fit, load_checkpoint, save_checkpoint
from pyrovae.infer import param_scope, read_checkpoint
from pyrovae.infer.checkpoint import atomic_save
from pyrovae.models.ppca import PPCA


def data(n=200, d=5):
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, 2, generator=gen) @ torch.randn(2, d, generator=gen) + 0.3 * torch.randn(
        n, d, generator=gen
    )


def test_load_checkpoint_rebuilds_the_model_with_the_same_elbo(tmp_path):
    x = data()
    ppca = PPCA(5, 2, init_scale=0.2)
    history = fit(ppca, x, lr=0.05, epochs=3, batch_size=50, checkpoint_dir=tmp_path)
    loaded = load_checkpoint(history.last_checkpoint)
    assert type(loaded) is PPCA and loaded.config == {
        "data_dim": 5,
        "latent_dim": 2,
        "init_scale": 0.2,
    }
    assert not loaded.training
    for (name, a), (_, b) in zip(
        ppca.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    elbo = pyro.infer.Trace_ELBO()
    with param_scope(ppca):
        pyro.set_rng_seed(1)
        before = elbo.differentiable_loss(ppca.model, ppca.guide, x)
    with param_scope(loaded):
        pyro.set_rng_seed(1)
        after = elbo.differentiable_loss(loaded.model, loaded.guide, x)
    assert before.item() == after.item()  # same weights, same seed: bit-identical
    payload = read_checkpoint(history.last_checkpoint)
    assert payload["epoch"] == 3 and payload["step"] == 12 and len(payload["history"]) == 3
    assert {"optimizer_state", "rng_state", "fit_config", "model_config"} <= payload.keys()


def test_atomic_save_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "ck.pt"
    atomic_save({"a": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError):
        atomic_save({"a": Unpicklable()}, path)
    assert torch.load(path, weights_only=False) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temporary file left


def test_checkpoint_without_config_cannot_be_rebuilt(tmp_path):
    save_checkpoint(tmp_path / "plain.pt", torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="no 'config'"):
        load_checkpoint(tmp_path / "plain.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    from pyro.nn import pyro_method
    from pyrovae import fit
    from pyrovae.models.ppca import PPCA

    mode, ckdir, out = sys.argv[1], sys.argv[2], sys.argv[3]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 2, generator=gen) @ torch.randn(2, 5, generator=gen)
    x = x + 0.3 * torch.randn(200, 5, generator=gen)

    class DiesAtCall17(PPCA):
        calls = 0

        @pyro_method
        def guide(self, x, subsample=None):
            DiesAtCall17.calls += 1
            if mode == "killed" and DiesAtCall17.calls == 17:
                os.kill(os.getpid(), signal.SIGKILL)  # a crash in epoch 1, step 6
            return super().guide(x, subsample)

    torch.manual_seed(123)
    ppca = DiesAtCall17(5, 2)
    history = fit(ppca, x, lr=0.05, epochs=3, batch_size=20, num_particles=2,
                  checkpoint_dir=ckdir, checkpoint_every=4, resume=(mode == "resume"), seed=9)
    torch.save({"state": ppca.state_dict(), "losses": history.losses}, out)
    """
)


def _run(script, *args):
    return subprocess.run(
        [sys.executable, str(script), *map(str, args)], capture_output=True, text=True
    )


def test_resume_after_kill_9_reaches_the_uninterrupted_parameters(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    done = _run(script, "plain", tmp_path / "a", tmp_path / "plain.pt")
    assert done.returncode == 0, done.stderr
    killed = _run(script, "killed", tmp_path / "b", tmp_path / "never.pt")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (tmp_path / "never.pt").exists()
    # The last checkpoint before the crash is the mid-epoch one at global step 16.
    survived = read_checkpoint(tmp_path / "b" / "last.pt")
    assert (survived["epoch"], survived["step"], survived["step_in_epoch"]) == (1, 16, 6)
    resumed = _run(script, "resume", tmp_path / "b", tmp_path / "resumed.pt")
    assert resumed.returncode == 0, resumed.stderr
    plain = torch.load(tmp_path / "plain.pt", weights_only=False)
    again = torch.load(tmp_path / "resumed.pt", weights_only=False)
    # Same seeds, batches, RNG states and optimiser state: bit-identical on CPU.
    assert plain["losses"] == again["losses"]
    for name, value in plain["state"].items():
        assert torch.equal(value, again["state"][name]), name
