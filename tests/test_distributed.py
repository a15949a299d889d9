"""Data-parallel ``fit``: sharding, gradient averaging, the loss's scale, checkpoints and resume.

The multi-process tests launch two CPU processes (gloo) through Lightning Fabric by running a
small script (``SCRIPT``) as a subprocess, as an experiment script would be run; Fabric starts
the second process by running the same script again. The single-process references run here,
in the test process, from the same script imported as a module.

Exactness: the models run in float64 and their reparameterised noise is a fixed function of
the data row (:class:`FixedNoise` in the script), so one process with batch 2B and two
processes with batch B compute the same gradient up to the order of floating-point sums (a
sum over 2B rows against two sums over B rows, averaged). After a few Adam steps the
parameters then agree to ~1e-12; we allow 1e-9 (float32 would need ~1e-5).
"""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from pyrovae.infer.checkpoint import read_checkpoint
from pyrovae.infer.streams import BatchPlan, Stream
from pyrovae.runs.folder import LOCK_FILE

pytestmark = pytest.mark.filterwarnings("ignore:TraceEnum_ELBO found no sample sites")

SCRIPT = textwrap.dedent(
    '''
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    from pyro.poutine.messenger import Messenger
    from pyrovae import fit
    from pyrovae.infer.distributed import global_rank
    from pyrovae.models import M2, VAE
    from pyrovae.models.ppca import PPCA

    N, D = 45, 10


    class FixedNoise(Messenger):
        """The guide's ``z = loc + scale * eps`` with ``eps`` given (one row per data row)."""

        def __init__(self, eps):
            super().__init__()
            self.eps = eps

        def _pyro_sample(self, msg):
            if msg["name"] == "z" and not msg["is_observed"]:
                base = msg["fn"].base_dist
                msg["value"] = base.loc + base.scale * self.eps


    class Fixed(torch.nn.Module):
        """A model whose guide noise depends on the data row only, not on who draws it."""

        def __init__(self, inner, kill_at=None):
            super().__init__()
            self.inner, self.kill_at, self.calls = inner, kill_at, 0

        def model(self, *args, subsample=None):
            self.inner.model(*args, subsample=subsample)

        def guide(self, *args, subsample=None):
            self.calls += 1
            if self.kill_at is not None and self.calls == self.kill_at and global_rank() == 1:
                os.kill(os.getpid(), signal.SIGKILL)
            x = args[0]
            gen = torch.Generator().manual_seed(x.shape[0])
            eps = torch.randn(x.shape[0], self.inner.latent_dim, generator=gen, dtype=x.dtype)
            with FixedNoise(eps[subsample]):
                self.inner.guide(*args, subsample=subsample)


    def binary(n, seed):
        gen = torch.Generator().manual_seed(seed)
        return (torch.rand(n, D, generator=gen, dtype=torch.float64) < 0.3).double()


    def state(module):
        return {k: v.detach().clone() for k, v in module.state_dict().items()}


    def train_vae(devices, batch, kill_at=None, **kwargs):
        torch.manual_seed(1)
        vae = Fixed(VAE(D, 2, hidden_sizes=(8,)).double(), kill_at)
        history = fit(vae, binary(N, 0), devices=devices, batch_size=batch, epochs=2, lr=0.02,
                      seed=3, progress=False, **kwargs)
        return state(vae), history.losses


    def train_m2(devices, scale):
        torch.manual_seed(2)
        m2 = Fixed(M2(D, 3, 2, hidden_sizes=[8], alpha=5.0).double())
        labelled = (binary(9, 1), torch.arange(9) % 3)
        data = {"labelled": labelled, "unlabelled": binary(40, 2)}
        history = fit(m2, data, devices=devices, objective="enum", lr=0.02, epochs=2, seed=4,
                      batch_size={"labelled": 3 * scale, "unlabelled": 8 * scale},
                      progress=False)
        return state(m2), history.losses


    def ppca_losses(devices, n, checkpoint_dir):
        """Per-step losses of PPCA with its exact posterior guide, parameters held fixed."""
        gen = torch.Generator().manual_seed(5)
        x = torch.randn(n, 2, generator=gen, dtype=torch.float64) @ torch.randn(
            2, 5, generator=gen, dtype=torch.float64)
        x = x + 0.5 * torch.randn(n, 5, generator=gen, dtype=torch.float64)
        torch.manual_seed(6)
        ppca = PPCA(5, 2).double()
        ppca.set_guide_to_posterior()
        fit(ppca, x, devices=devices, optimizer="sgd", lr=0.0, epochs=1, batch_size=8, seed=7,
            checkpoint_dir=checkpoint_dir, progress=False)
        return x, ppca


    if __name__ == "__main__":
        mode, out = sys.argv[1], sys.argv[2]
        if mode == "equivalence":
            results = dict(vae=train_vae(2, 8), m2=train_m2(2, 1))
            # The compiled step (eager on the CPU) against the eager one, both data-parallel;
            # compiled implies drop_last, so the eager run drops the last batch too.
            results["compiled"] = train_vae(2, 8, compiled=True)
            results["eager_drop_last"] = train_vae(2, 8, drop_last=True)
            for n in (45, 48):
                ppca_losses(2, n, os.path.join(os.path.dirname(out), f"ppca{n}"))
        else:  # plain, killed, resume: 2 processes with checkpoints every 2 steps
            ckdir = sys.argv[3]
            devices, batch = (1, 16) if mode == "resume1" else (2, 8)
            results = train_vae(devices, batch, kill_at=6 if mode == "killed" else None,
                                checkpoint_dir=ckdir, checkpoint_every=2,
                                resume=mode.startswith("resume"))
        if global_rank() == 0:
            torch.save(results, out)
    '''
)


def _script(tmp_path):
    path = tmp_path / "train_parallel.py"
    path.write_text(SCRIPT)
    spec = importlib.util.spec_from_file_location("train_parallel", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return path, module


def _launch(path, *args, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, str(path), *map(str, args)], capture_output=True, text=True, env=env,
        timeout=timeout, cwd=path.parent,
    )


def _assert_close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=atol, msg=name)


def _stream(n: int, name: str = "data") -> Stream:
    return Stream(name, torch.zeros(n, 1), torch.device("cpu"))


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("drop_last", [False, True])
def test_shards_cover_every_example_once_per_epoch(world_size, drop_last):
    streams = [_stream(45, "unlabelled"), _stream(9, "labelled")]
    sizes = [8 * world_size, 3 * world_size]
    for epoch in range(3):
        whole = BatchPlan(streams, sizes, seed=1, epoch=epoch, drop_last=drop_last)
        shards = [
            BatchPlan(streams, sizes, 1, epoch, drop_last, rank=r, world_size=world_size)
            for r in range(world_size)
        ]
        assert {p.num_steps for p in shards} == {whole.num_steps}
        for k in range(whole.num_steps):
            for i in range(len(streams)):
                # The ranks' shards, in rank order, are the single-process batch.
                joined = torch.cat([p.step(k)[i] for p in shards])
                assert torch.equal(joined, whole.step(k)[i])
            weights = [p.weights(k) for p in shards]
            for i in range(len(streams)):
                assert sum(w[i] for w in weights) == pytest.approx(world_size)
        seen = torch.cat([p.step(k)[0] for p in shards for k in range(whole.num_steps)])
        expected = 45 - (45 % sizes[0] if drop_last else 0)
        assert seen.numel() == expected and seen.unique().numel() == expected


def test_a_rank_with_no_rows_gets_an_empty_shard_and_zero_weight():
    # 45 rows in global batches of 44: the last global batch has one row, for rank 0 only.
    streams = [_stream(45)]
    ranks = [BatchPlan(streams, [44], 0, 0, False, rank=r, world_size=2) for r in (0, 1)]
    assert [p.step(1)[0].numel() for p in ranks] == [1, 0]
    assert [p.weights(1) for p in ranks] == [[2.0], [0.0]]


def test_bad_rank_is_refused():
    with pytest.raises(ValueError, match="rank 2"):
        BatchPlan([_stream(4)], [2], 0, 0, False, rank=2, world_size=2)


@pytest.fixture(scope="module")
def equivalence(tmp_path_factory):
    """One two-process launch of the script's ``equivalence`` mode: its folder, the script
    (imported here, for the single-process references) and the ranks' results."""
    tmp_path = tmp_path_factory.mktemp("equivalence")
    path, script = _script(tmp_path)
    done = _launch(path, "equivalence", tmp_path / "parallel.pt")
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp_path, script, torch.load(tmp_path / "parallel.pt", weights_only=False)


def test_two_processes_with_batch_b_train_as_one_with_batch_2b(equivalence):
    """VAE and M2 (enumerated labels, two streams): same parameters; PPCA: the exact loss.

    The last global batch of the VAE's epoch has 13 rows, split 7/6: the shards' weights
    (14/13 and 12/13) keep the average equal to the single-process estimate.
    """
    tmp_path, script, parallel = equivalence

    vae_state, vae_losses = script.train_vae(None, 16)
    _assert_close(parallel["vae"][0], vae_state, atol=1e-9)
    # fit keeps step losses in float32: the epoch means agree to float32 rounding.
    assert parallel["vae"][1] == pytest.approx(vae_losses, rel=1e-6)
    m2_state, m2_losses = script.train_m2(None, 2)
    _assert_close(parallel["m2"][0], m2_state, atol=1e-9)
    assert parallel["m2"][1] == pytest.approx(m2_losses, rel=1e-6)

    # PPCA with its exact posterior guide: log p(x, z) - log q(z | x) = log p(x) for every z,
    # so each step's rank-averaged loss must equal -N/M * sum of log p(x_i) over the global
    # batch, exactly (to the float32 rounding of fit's step losses: the estimates are exact in
    # float64), and the mean over an epoch of equal shards -log p(X).
    from pyrovae.models.ppca import log_marginal

    for n in (45, 48):
        x, ppca = script.ppca_losses(None, n, tmp_path / f"single{n}")
        log_p = log_marginal(x, ppca.params())
        plan = BatchPlan([_stream(n)], [16], seed=7, epoch=0, drop_last=False)
        batches = [plan.step(k)[0] for k in range(plan.num_steps)]
        expected = torch.stack([-n / len(b) * log_p[b].sum() for b in batches]).float()
        losses = read_checkpoint(tmp_path / f"ppca{n}" / "last.pt")["step_losses"]
        torch.testing.assert_close(losses, expected, rtol=3e-7, atol=0)
        if n % 16 == 0:
            torch.testing.assert_close(losses.mean(), -log_p.sum().float(), rtol=3e-7, atol=0)
    # The checkpoint written by two processes records the world size and global batch.
    stored = read_checkpoint(tmp_path / "ppca45" / "last.pt")["fit_config"]
    assert (stored["world_size"], stored["batch_size"]) == (2, [16])


@pytest.mark.slow
def test_kill_one_process_then_resume_reaches_the_uninterrupted_run(tmp_path):
    """Rank 1 is killed (SIGKILL) mid-epoch 1; the survivor fails; a relaunch resumes.

    Same world size: bit-identical parameters and losses. One process with batch 2B from the
    same checkpoint (a different world size, the same global batches): equal to 1e-9.
    """
    path, _ = _script(tmp_path)
    plain = _launch(path, "plain", tmp_path / "plain.pt", tmp_path / "a")
    assert plain.returncode == 0, plain.stderr[-3000:]
    killed = _launch(path, "killed", tmp_path / "never.pt", tmp_path / "b", timeout=300)
    assert killed.returncode != 0
    assert not (tmp_path / "never.pt").exists()
    # 3 steps an epoch; rank 1 dies in its 6th step (epoch 1's last), so the last checkpoint
    # is the mid-epoch one written after global step 4, with both ranks' RNG states.
    survived = read_checkpoint(tmp_path / "b" / "last.pt")
    assert (survived["epoch"], survived["step"], survived["step_in_epoch"]) == (1, 4, 1)
    assert len(survived["rank_rng_states"]) == 2
    (tmp_path / "c").mkdir()
    for name in ("last.pt", "previous.pt"):
        if (tmp_path / "b" / name).exists():
            (tmp_path / "c" / name).write_bytes((tmp_path / "b" / name).read_bytes())
    resumed = _launch(path, "resume", tmp_path / "resumed.pt", tmp_path / "b")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    one = _launch(path, "resume1", tmp_path / "one.pt", tmp_path / "c")
    assert one.returncode == 0, one.stderr[-3000:]
    reference = torch.load(tmp_path / "plain.pt", weights_only=False)
    again = torch.load(tmp_path / "resumed.pt", weights_only=False)
    assert reference[1] == again[1]
    for name, value in reference[0].items():
        assert torch.equal(value, again[0][name]), name
    single = torch.load(tmp_path / "one.pt", weights_only=False)
    _assert_close(single[0], reference[0], atol=1e-9)
    assert single[1] == pytest.approx(reference[1], rel=1e-6)


def test_benchmark_script_runs_at_tiny_size(tmp_path):
    script = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "data_parallel.py")
    args = ["--devices", "1", "--batch-size", "4", "--steps", "2", "--epochs", "2"]
    done = subprocess.run(
        [sys.executable, script, *args, "--out", str(tmp_path / "dp.json")],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "dp.json").read_text())
    assert result["examples_per_second"] > 0 and result["allreduce_seconds"] is None
    # The all-reduced buffer: the VAE's parameters (the first step also sends one flag per
    # parameter tensor, once).
    from pyrovae.models.vae import VAE

    params = list(VAE(784, 20, hidden_sizes=(400,)).parameters())
    assert result["allreduce_floats"] == sum(p.numel() for p in params)
    sizes = subprocess.run([sys.executable, script, "--sizes"], capture_output=True, text=True)
    assert json.loads(sizes.stdout)["VAE 784-400-20"] == 784 * 400 + 400 + 2 * (400 * 20 + 20) + (
        20 * 400 + 400 + 400 * 784 + 784
    )


def test_compiled_step_trains_data_parallel_as_the_eager_step(equivalence):
    """``fit(compiled=True, devices=2)`` (the compiled step runs eagerly on the CPU, with its
    graph-safe objective and the all-reduce between backward and the update) reaches the
    parameters of the eager data-parallel step. They came out identical here; the graph-safe
    objective may sum the same float64 terms in another order than Pyro's, so we allow 1e-9
    (as for the other float64 comparisons)."""
    _, _, parallel = equivalence
    _assert_close(parallel["compiled"][0], parallel["eager_drop_last"][0], atol=1e-9)
    assert parallel["compiled"][1] == pytest.approx(parallel["eager_drop_last"][1], rel=1e-6)
    assert parallel["compiled"][1] != parallel["vae"][1]  # drop_last did drop a batch


@pytest.fixture
def one_process_group(tmp_path):
    import torch.distributed as dist

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_gradient_average_settles_its_parameters_once_then_never_syncs(one_process_group):
    """In a one-process gloo group: gradients come back unchanged, ``None`` stays ``None``;
    after the first call no host read (the flags are exchanged once), a missing gradient of a
    member is a zero, and a late gradient of a non-member is dropped with a warning."""
    from pyrovae.infer import forbid_host_sync
    from pyrovae.infer.distributed import GradientAverage

    a, b, c = (torch.nn.Parameter(torch.randn(3, 2)) for _ in range(3))
    a.grad, c.grad = torch.randn(3, 2), torch.randn(3, 2)
    expected_a, expected_c = a.grad.clone(), c.grad.clone()
    average = GradientAverage(world_size=1, timed=True)
    average([a, b, c])
    assert torch.equal(a.grad, expected_a) and torch.equal(c.grad, expected_c)
    assert b.grad is None and average.members == [True, False, True]
    assert (average.numel, average.calls) == (2 * 6, 1) and average.seconds > 0

    a.grad, c.grad = torch.randn(3, 2), None  # c has no gradient on this rank now: a zero
    expected_a = a.grad.clone()
    with forbid_host_sync():
        average([a, b, c])
    assert torch.equal(a.grad, expected_a) and torch.equal(c.grad, torch.zeros(3, 2))
    assert b.grad is None and average.calls == 2

    a.grad, b.grad = torch.randn(3, 2), torch.randn(3, 2)
    with forbid_host_sync(), pytest.warns(RuntimeWarning, match="after the first step"):
        average([a, b, c])
    assert b.grad is None and average.members == [True, False, True]


@pytest.mark.parametrize("kwargs", [dict(devices=0), dict(num_nodes=0), dict(devices=True)])
def test_launch_refuses_bad_counts(kwargs):
    from pyrovae import fit
    from pyrovae.models import VAE

    with pytest.raises(ValueError, match="positive integer"):
        fit(VAE(4, 2, hidden_sizes=(3,)), torch.zeros(8, 4), **kwargs)


# ----------------------------------------------------------------- commands and scripts
def _run_module(module: str, *args: str, cwd=None, **env_vars) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg", **env_vars)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([repo, env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          env=env, timeout=300, cwd=cwd or repo)


def test_cli_train_with_two_devices_writes_one_run(tmp_path):
    """``pyrovae vae train --devices 2`` (the command is started again by Fabric as
    ``python -m pyrovae.cli.__main__``): one run folder, one printed line, a loadable
    checkpoint of the two-process run."""
    from pyrovae import load_checkpoint

    out = tmp_path / "run"
    done = _run_module(
        "pyrovae.cli", "vae", "train", "--dataset", "digits", "--train-size", "128",
        "--test-size", "32", "--latent-dim", "2", "--hidden-sizes", "8", "--epochs", "1",
        "--batch-size", "16", "--device", "cpu", "--devices", "2", "--out", str(out),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("VAE (K=2) on digits") == 1, done.stdout
    assert "error" not in done.stderr.lower()
    assert done.stderr.count("epoch 0:") == 1  # rank 0 alone logs
    assert {p.name for p in out.iterdir()} - {LOCK_FILE} == {
        "last.pt", "options.json", "train.json", "metrics.csv", "curve.png"}
    options = json.loads((out / "options.json").read_text())
    assert (options["devices"], options["num_nodes"]) == (2, 1)
    stored = read_checkpoint(out / "last.pt")["fit_config"]
    assert (stored["world_size"], stored["batch_size"]) == (2, [32])
    load_checkpoint(out / "last.pt")


def test_experiment_script_with_two_devices_writes_one_set_of_outputs(tmp_path, mnist_root):
    """``python -m experiments.uses.train_vae --devices 2``: Fabric starts the module again;
    rank 0 alone writes run_options.json, the checkpoints, vae.pt and train.json, and prints;
    after ``fit`` rank 0 alone goes on (``pyrovae.runs.provenance.evaluates``, whose answers the
    marker files record)."""
    from pyrovae import load_checkpoint
    from pyrovae.runs.provenance import RANK_MARKERS_ENV

    out, markers = tmp_path / "vae", tmp_path / "markers"
    markers.mkdir()
    done = _run_module(
        "experiments.uses.train_vae", "--train-size", "200", "--hidden-sizes", "16",
        "--latent-dim", "2", "--epochs", "1", "--batch-size", "50", "--data-root", str(mnist_root),
        "--devices", "2", "--out", str(out), **{RANK_MARKERS_ENV: str(markers)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert {p.name: p.read_text() for p in markers.iterdir()} == {
        "rank0": "evaluates\n", "rank1": "skips\n"}
    assert done.stdout.count("trained 1 epochs") == 1, done.stdout
    assert {p.name for p in out.iterdir()} - {LOCK_FILE} == {
        "fit", "run_options.json", "train.json", "vae.pt"}
    assert {p.name for p in (out / "fit").iterdir()} == {"last.pt"}
    assert read_checkpoint(out / "fit" / "last.pt")["fit_config"]["world_size"] == 2
    load_checkpoint(out / "vae.pt")


def test_cli_refusal_on_rank_0_ends_every_process_with_one_message(tmp_path):
    """``--out`` holding a run: rank 0 refuses it after the launch; ``main_first`` hands the
    error to rank 1, so both exit (no rank waits in a collective) and one line is printed."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"")
    done = _run_module(
        "pyrovae.cli", "vae", "train", "--dataset", "digits", "--device", "cpu",
        "--devices", "2", "--out", str(out),
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.count("pyrovae: error: --out") == 1, done.stderr
    assert {p.name for p in out.iterdir()} - {LOCK_FILE} == {"last.pt"}
