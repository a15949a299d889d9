"""Checkpoints: atomic writes, reloading for evaluation, and resuming after kill -9."""

import signal
import subprocess
import sys
import textwrap

import pyro
import pytest
import torch
from conftest import REPO

from pyrovae import fit, load_checkpoint, save_checkpoint
from pyrovae.infer import CheckpointError, CheckpointWarning, param_scope, read_checkpoint
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


def _trained(tmp_path, epochs=2, **kwargs):
    torch.manual_seed(0)
    ppca = PPCA(5, 2)
    history = fit(ppca, data(), lr=0.05, epochs=epochs, batch_size=50, checkpoint_dir=tmp_path,
                  **kwargs)
    return ppca, history


def _flip_a_weight_bit(path, state):
    """Flip one bit inside the stored bytes of the first weight (torch.save does not compress)."""
    raw = bytearray(path.read_bytes())
    name, weight = next((k, v) for k, v in state.items() if v.numel() >= 4)
    at = raw.find(weight.detach().cpu().numpy().tobytes())
    assert at >= 0, f"{name}'s bytes not found in {path}"
    raw[at + 2] ^= 0x10
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "bit_flip", "tampered"])
def test_a_damaged_checkpoint_is_a_one_line_error_naming_the_file(tmp_path, damage):
    ppca, history = _trained(tmp_path, epochs=1)
    path = history.last_checkpoint
    raw = path.read_bytes()
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x80\x04not a checkpoint at all" * 10)
    elif damage == "bit_flip":
        _flip_a_weight_bit(path, ppca.state_dict())
    else:  # a value changed by hand, the digest left as it was
        payload = torch.load(path, weights_only=False)
        payload["epoch"] += 1
        torch.save(payload, path)
    for read in (read_checkpoint, load_checkpoint):
        with pytest.raises(CheckpointError) as caught:
            read(path)
        message = str(caught.value)
        assert str(path) in message and "\n" not in message
        assert isinstance(caught.value, ValueError)  # old `except ValueError` still catches it
    if damage in ("bit_flip", "tampered"):
        assert "sha256" in message  # read fine, caught by the digest


def test_a_checkpoint_without_a_digest_still_loads():
    # Written before the digest existed (format 1): results/m2's M1+M2 figure model.
    path = REPO / "results" / "m2" / "figures_m1m2_100labels" / "model.pt"
    raw = torch.load(path, weights_only=False)
    assert raw["format"] == 1 and "sha256" not in raw
    model = load_checkpoint(path)
    for name, value in model.state_dict().items():
        assert torch.equal(value, raw["model_state"][name]), name


def test_resume_falls_back_to_previous_when_last_is_damaged(tmp_path):
    x = data()
    torch.manual_seed(0)
    whole = PPCA(5, 2)
    straight = fit(whole, x, lr=0.05, epochs=3, batch_size=50)
    ppca, _ = _trained(tmp_path / "run", epochs=2)
    last, previous = tmp_path / "run" / "last.pt", tmp_path / "run" / "previous.pt"
    assert read_checkpoint(previous)["epoch"] == 1 and read_checkpoint(last)["epoch"] == 2
    _flip_a_weight_bit(last, ppca.state_dict())
    torch.manual_seed(1)
    again = PPCA(5, 2)
    with pytest.warns(CheckpointWarning, match="previous.pt"):
        resumed = fit(again, x, lr=0.05, epochs=3, batch_size=50, checkpoint_dir=tmp_path / "run",
                      resume=True)
    # Epoch 1's checkpoint holds everything (weights, optimiser, RNGs): epochs 1 and 2 are
    # redone exactly as in the uninterrupted run.
    assert resumed.losses == straight.losses
    for name, value in whole.state_dict().items():
        assert torch.equal(value, again.state_dict()[name]), name
    # The damaged last.pt was not kept as previous.pt: that is now epoch 2's good checkpoint.
    assert read_checkpoint(previous)["epoch"] == 2
    last.write_bytes(b"")
    previous.write_bytes(b"")
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        fit(PPCA(5, 2), x, epochs=3, batch_size=50, checkpoint_dir=tmp_path / "run", resume=True)


def test_resume_with_another_configuration_is_refused_unless_allowed(tmp_path):
    x = data()
    _trained(tmp_path, epochs=1)
    with pytest.raises(ValueError, match=r"lr: 0\.05 -> 0\.01; batch_size: \[50\] -> \[40\]"):
        fit(PPCA(5, 2), x, lr=0.01, epochs=2, batch_size=40, checkpoint_dir=tmp_path,
            resume=True)
    with pytest.raises(ValueError, match=r"model: .*'latent_dim': 2.* -> .*'latent_dim': 3"):
        fit(PPCA(5, 3), x, lr=0.05, epochs=2, batch_size=50, checkpoint_dir=tmp_path,
            resume=True)
    with pytest.raises(ValueError, match=r"data: \{'data': 200\} -> \{'data': 150\}"):
        fit(PPCA(5, 2), x[:150], lr=0.05, epochs=2, batch_size=50, checkpoint_dir=tmp_path,
            resume=True)
    with pytest.raises(ValueError, match="unknown settings"):
        fit(PPCA(5, 2), x, lr=0.01, epochs=2, batch_size=50, checkpoint_dir=tmp_path,
            resume=True, allow_config_change=("learning_rate",))
    # Allowed: epoch 1 runs at the new rate, and both configurations are on record.
    history = fit(PPCA(5, 2), x, lr=0.01, epochs=2, batch_size=50, checkpoint_dir=tmp_path,
                  resume=True, allow_config_change=("lr",))
    assert history.column("lr") == [0.05, 0.01]
    assert [(c["epoch"], c["config"]["lr"]) for c in history.configs] == [(0, 0.05), (1, 0.01)]
    assert read_checkpoint(tmp_path / "last.pt")["run_configs"] == history.configs
    # epochs may grow without an override; the configuration list does not grow.
    more = fit(PPCA(5, 2), x, lr=0.01, epochs=3, batch_size=50, checkpoint_dir=tmp_path,
               resume=True)
    assert len(more.epochs) == 3 and len(more.configs) == 2
