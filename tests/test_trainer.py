"""The trainer: minibatch scaling, streams, objectives, user model/guide functions, bad input."""

import logging

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints

from pyrovae import fit
from pyrovae.infer import (
    NonFiniteLossError,
    SubsampleWarning,
    TimeBudget,
    make_objective,
    param_scope,
)
from pyrovae.infer.checkpoint import read_checkpoint
from pyrovae.infer.streams import BatchPlan, make_streams
from pyrovae.models.ppca import PPCA, fit_closed_form, log_marginal


def ppca_data(n=400, d=6, k=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(d, k, generator=gen)
    return torch.randn(n, k, generator=gen) @ W.T + 0.5 * torch.randn(n, d, generator=gen)


def exact_ppca(x, k=2):
    """A PPCA at the ML fit with the exact-posterior guide: every ELBO sample is log p(x)."""
    ppca = PPCA(x.shape[1], k).double()
    ml = fit_closed_form(x, k)
    with torch.no_grad():
        ppca.W, ppca.mu, ppca.sigma2 = ml.W, ml.mu, ml.sigma2
    ppca.set_guide_to_posterior()
    return ppca, log_marginal(x, ml)


@pytest.mark.parametrize("objective", ["elbo", "meanfield", "iwae"])
def test_subsampled_loss_is_n_over_m_times_the_batch_loss(objective):
    x = ppca_data().double()
    ppca = PPCA(6, 2).double()
    idx = torch.tensor([3, 10, 11, 50, 399])
    loss = make_objective(objective, num_particles=3)
    pyro.set_rng_seed(7)
    scaled = loss.differentiable_loss(ppca.model, ppca.guide, x, subsample=idx)
    pyro.set_rng_seed(7)
    alone = loss.differentiable_loss(ppca.model, ppca.guide, x[idx])
    # Same seed, same shapes, hence the same draws: only the plate's N/M factor differs.
    assert scaled.item() == pytest.approx(80.0 * alone.item(), rel=1e-12)


@pytest.mark.parametrize("objective", ["elbo", "iwae"])
def test_minibatch_loss_is_unbiased_for_the_full_data(objective):
    x = ppca_data().double()
    ppca, log_px = exact_ppca(x)
    idx = torch.tensor([3, 10, 11, 50, 399])
    loss = make_objective(objective, num_particles=3).differentiable_loss(
        ppca.model, ppca.guide, x, subsample=idx
    )
    # With the exact posterior as guide the estimator has zero variance, so the N/M-scaled
    # minibatch loss equals -(N/M) sum_batch log p(x_i) up to float64 rounding.
    expected = -(x.shape[0] / len(idx)) * log_px[idx].sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-9)


def test_epoch_loss_estimates_the_full_data_loss():
    x = ppca_data().double()
    ppca, log_px = exact_ppca(x)
    history = fit(ppca, x, lr=0.0, epochs=2, batch_size=64, optimizer="sgd")
    # lr = 0 keeps the exact model, whose ELBO samples have zero variance, so each step's loss
    # is exactly (N/M) sum_batch -log p(x_i); the epoch's loss is their mean over the batches
    # (400 = 6*64 + 16: the last batch is shorter and weighs N/16).
    plan = BatchPlan(make_streams(x, torch.device("cpu")), [64], 0, 1, drop_last=False)
    batches = [plan.step(k)[0] for k in range(plan.num_steps)]
    steps = [400 / len(b) * -log_px[b].sum() for b in batches]
    assert history.epochs[1]["steps"] == 7
    assert history.losses[1] == pytest.approx(torch.stack(steps).mean().item(), rel=1e-6)
    even = fit(ppca, x, lr=0.0, epochs=1, batch_size=80, optimizer="sgd")
    # With equal batches that tile the data, the mean is the full-data loss itself.
    assert even.losses[0] == pytest.approx(-log_px.sum().item(), rel=1e-6)
    assert even.epochs[0]["loss_per_example"] == pytest.approx(-log_px.mean().item(), rel=1e-6)


def test_batch_plan_covers_every_row_once_per_epoch():
    streams = make_streams(torch.zeros(103, 2), torch.device("cpu"))
    plan = BatchPlan(streams, [10], seed=0, epoch=4, drop_last=False)
    rows = torch.cat([plan.step(k)[0] for k in range(plan.num_steps)])
    assert plan.num_steps == 11 and sorted(rows.tolist()) == list(range(103))
    again = BatchPlan(streams, [10], seed=0, epoch=4, drop_last=False)
    assert torch.equal(rows, torch.cat([again.step(k)[0] for k in range(again.num_steps)]))
    other = BatchPlan(streams, [10], seed=0, epoch=5, drop_last=False)
    assert not torch.equal(rows, torch.cat([other.step(k)[0] for k in range(11)]))
    dropped = BatchPlan(streams, [10], seed=0, epoch=4, drop_last=True)
    assert dropped.num_steps == 10


@pytest.mark.parametrize("n_small, batch", [(100, 128), (100, 32), (7, 5)])
def test_small_stream_cycles_with_any_batch_size(n_small, batch):
    data = {"big": torch.zeros(1000, 2), "small": (torch.zeros(n_small, 2), torch.arange(n_small))}
    streams = make_streams(data, torch.device("cpu"))
    plan = BatchPlan(streams, [batch, batch], seed=1, epoch=0, drop_last=False)
    assert plan.num_steps == -(-1000 // batch)
    small = [plan.step(k)[1] for k in range(plan.num_steps)]
    assert all(len(b) == min(batch, n_small) for b in small)
    counts = torch.bincount(torch.cat(small), minlength=n_small)
    # Each pass over the small stream is a permutation, so counts differ by at most one.
    assert counts.max() - counts.min() <= 1


class TwoStreamModel(PPCA):
    """PPCA whose second stream carries a label it ignores: checks per-stream calls."""

    def model(self, x, y=None, subsample=None):
        super().model(x, subsample)

    def guide(self, x, y=None, subsample=None):
        super().guide(x, subsample)


def test_two_streams_sum_their_scaled_losses():
    x = ppca_data().double()
    exact, log_px = exact_ppca(x)
    two = TwoStreamModel(6, 2).double()
    two.load_state_dict(exact.state_dict())
    data = {"a": x[:300], "b": (x[300:], torch.zeros(100, dtype=torch.long))}
    # 6 steps of 50 from "a" (one pass) and 6 of 50 from "b" (three passes): each step is
    # an exact estimate per stream, and the epoch mean is the total over both.
    history = fit(two, data, lr=0.0, optimizer="sgd", epochs=1, batch_size={"a": 50, "b": 50})
    assert history.losses[0] == pytest.approx(-log_px.sum().item(), rel=1e-6)


def test_alternating_plan_takes_one_stream_per_step_each_once_per_epoch():
    data = {"big": torch.zeros(1000, 2), "small": (torch.zeros(70, 2), torch.arange(70))}
    streams = make_streams(data, torch.device("cpu"))
    plan = BatchPlan(streams, [100, 20], seed=3, epoch=2, drop_last=False, scheme="alternating")
    assert plan.num_steps == 10 + 4
    active = [[i for i, b in enumerate(plan.step(k)) if b.numel()] for k in range(14)]
    assert all(len(a) == 1 for a in active)
    for i, n in enumerate([1000, 70]):
        rows = torch.cat([plan.step(k)[i] for k in range(14)])
        assert sorted(rows.tolist()) == list(range(n))
    # The small stream's 4 batches are spread over the epoch, not bunched at one end.
    small_steps = [k for k in range(14) if active[k] == [1]]
    assert small_steps[0] <= 3 and small_steps[-1] >= 10
    # Weight S * M / N on the N/M-scaled loss of the step's stream: 14 * 100/1000, 14 * 20/70
    # (the last small batch has 10 rows).
    weights = [plan.weights(k)[active[k][0]] for k in range(14)]
    sizes = [plan.step(k)[active[k][0]].numel() for k in range(14)]
    expected = [14 * m / (1000 if a == [0] else 70) for m, a in zip(sizes, active, strict=True)]
    assert weights == pytest.approx(expected, rel=1e-12)
    again = BatchPlan(streams, [100, 20], seed=3, epoch=2, drop_last=False, scheme="alternating")
    assert all(torch.equal(a, b) for k in range(14)
               for a, b in zip(plan.step(k), again.step(k), strict=True))


def test_alternating_epoch_adds_up_to_the_full_objective():
    x = ppca_data().double()
    exact, log_px = exact_ppca(x)
    two = TwoStreamModel(6, 2).double()
    two.load_state_dict(exact.state_dict())
    data = {"a": x[:300], "b": (x[300:], torch.zeros(100, dtype=torch.long))}
    # With the exact model each step's weighted loss is S * sum_batch -log p(x_i) (S = 6 + 2
    # steps), so the epoch's mean over its steps is the total -log p over both streams (the
    # N/M-scaled losses unweighted would average to (6 A + 2 B) / 8 for stream totals A, B).
    history = fit(two, data, lr=0.0, optimizer="sgd", epochs=1, batch_size={"a": 50, "b": 50},
                  step_scheme="alternating")
    assert history.epochs[0]["steps"] == 8
    assert history.losses[0] == pytest.approx(-log_px.sum().item(), rel=1e-6)
    with pytest.raises(ValueError, match="step_scheme must be one of"):
        fit(two, data, epochs=1, step_scheme="interleaved")
    with pytest.raises(ValueError, match="step_scheme='joint'"):
        fit(two, data, epochs=1, compiled=True, step_scheme="alternating")


def test_user_functions_train_with_pyro_param():
    gen = torch.Generator().manual_seed(0)
    x = 3.0 + 2.0 * torch.randn(500, 1, generator=gen)

    def model(x, subsample=None):
        loc = pyro.param("loc", torch.tensor(0.0))
        scale = pyro.param("scale", torch.tensor(1.0), constraint=constraints.positive)
        with pyro.plate("data", x.shape[0], subsample=subsample) as idx:
            pyro.sample("x", dist.Normal(loc, scale), obs=x[idx, 0])

    def guide(x, subsample=None):
        pass

    fit(model, x, guide=guide, lr=0.05, epochs=100, batch_size=100, lr_schedule="cosine")
    # Maximum likelihood: the sample mean and (1/N) standard deviation. 500 Adam steps with a
    # decaying step on this smooth problem land within 0.05 of both (minibatch noise ~0.01).
    assert pyro.param("loc").item() == pytest.approx(x.mean().item(), abs=0.05)
    assert pyro.param("scale").item() == pytest.approx(x.std(unbiased=False).item(), abs=0.05)


def test_jit_loss_equals_the_exact_value():
    x = ppca_data().double()
    ppca, log_px = exact_ppca(x)
    idx = torch.arange(0, 100)
    jit_loss = make_objective("elbo", jit=True)
    with param_scope(ppca):
        first = jit_loss.differentiable_loss(ppca.model, ppca.guide, x, idx)  # compiles
        again = jit_loss.differentiable_loss(ppca.model, ppca.guide, x, idx + 100)
    # The compiled graph draws its noise in another order than eager Pyro, so compare where the
    # draws cannot matter: with the exact-posterior guide each loss is -(N/M) sum log p(x_i).
    assert first.item() == pytest.approx(-4 * log_px[:100].sum().item(), rel=1e-9)
    assert again.item() == pytest.approx(-4 * log_px[100:200].sum().item(), rel=1e-9)


def test_jit_fit_trains_every_parameter():
    x = ppca_data()
    ppca = PPCA(6, 2)
    before = {k: v.clone() for k, v in ppca.state_dict().items()}
    history = fit(ppca, x, lr=0.05, epochs=20, batch_size=100, jit=True)
    for name, value in ppca.state_dict().items():
        assert not torch.equal(value, before[name]), f"{name} did not move under jit"
    assert history.losses[-1] < 0.8 * history.losses[0]


def test_lr_schedules_and_callbacks():
    x = ppca_data(n=100)
    seen = []
    history = fit(
        PPCA(6, 2),
        x,
        lr=0.1,
        epochs=4,
        batch_size=50,
        lr_schedule="exponential:0.5",
        callbacks=[lambda e: seen.append(e.epoch) or {"double": 2 * e.epoch}],
    )
    assert history.column("lr") == pytest.approx([0.1, 0.05, 0.025, 0.0125])
    assert seen == [0, 1, 2, 3] and history.column("double") == [0, 2, 4, 6]
    cosine = fit(PPCA(6, 2), x, lr=1.0, epochs=2, batch_size=50, lr_schedule="cosine")
    assert cosine.column("lr") == pytest.approx([1.0, 0.5])


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_nan_loss_names_epoch_and_step(tmp_path):
    x = ppca_data(n=100)
    calls = {"n": 0}

    class Exploding(PPCA):
        def model(self, x, subsample=None):
            super().model(x, subsample)
            calls["n"] += 1
            if calls["n"] > 13:
                pyro.factor("boom", torch.tensor(float("nan")))

    # Validation off: Pyro's own check would raise a ValueError at the NaN factor first.
    with (
        pyro.validation_enabled(False),
        pytest.raises(NonFiniteLossError, match=r"epoch 1, step 3 of the epoch \(global step 13\)"),
    ):
        fit(Exploding(6, 2), x, epochs=3, batch_size=10, checkpoint_dir=tmp_path, sync_every=4)
    # The checkpoint of the last finished epoch survives, with finite weights.
    kept = torch.load(tmp_path / "last.pt", weights_only=False)
    assert kept["epoch"] == 1 and kept["step"] == 10
    assert all(torch.isfinite(v).all() for v in kept["model_state"].values())


@pytest.mark.parametrize(
    "data, kwargs, message",
    [
        (torch.zeros(0, 6), {}, "empty"),
        (torch.full((10, 6), float("nan")), {}, "NaN or inf"),
        (torch.zeros(10, 6), {"device": "banana"}, "unknown device"),
        (torch.zeros(10, 6), {"objective": "magic"}, "unknown objective"),
        (torch.zeros(10, 6), {"batch_size": 0}, "batch_size"),
        ({"a": torch.zeros(10, 6)}, {"batch_size": {"a": 0}}, "positive integer, got 0"),
        (torch.zeros(10, 6), {"optimizer": "lbfgs2"}, "unknown optimizer"),
        ((torch.zeros(10, 6), torch.zeros(9)), {}, "different lengths"),
        (torch.zeros(10, 5), {}, r"shape \[N, 6\]"),
        (torch.zeros(10, 6, dtype=torch.long), {}, "floating-point"),
    ],
)
def test_bad_input_is_a_clear_value_error(data, kwargs, message):
    with pytest.raises(ValueError, match=message):
        fit(PPCA(6, 2), data, epochs=1, **kwargs)


def test_cuda_without_a_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="CUDA is not available"):
        fit(PPCA(6, 2), torch.zeros(10, 6), device="cuda")


@pytest.mark.parametrize(
    "validate, expected",
    [("first", [True, False, False]), (True, [True] * 3), (False, [False] * 3)],
)
def test_validation_on_the_first_step_only_by_default(validate, expected):
    seen = []

    class Recording(PPCA):
        def model(self, x, subsample=None):
            seen.append(pyro.infer.util.is_validation_enabled())
            super().model(x, subsample)

    fit(Recording(6, 2), ppca_data(n=30), epochs=1, batch_size=10, validate=validate)
    assert seen == expected  # the conftest turns Pyro's validation on globally


def test_a_callback_can_stop_training(tmp_path):
    history = fit(
        PPCA(6, 2),
        ppca_data(n=40),
        epochs=10,
        batch_size=20,
        checkpoint_dir=tmp_path,
        callbacks=[lambda end: {"stop": end.epoch == 2}],
    )
    assert len(history.epochs) == 3 and "stop" not in history.epochs[-1]
    assert torch.load(tmp_path / "last.pt", weights_only=False)["epoch"] == 3


def test_time_budget_stops_after_the_epoch_that_crosses_it_and_resume_goes_on(tmp_path):
    x = ppca_data().float()
    budget = TimeBudget(minutes=1e-9)  # already used up: the first epoch is the last
    first = fit(PPCA(6, 2), x, epochs=5, batch_size=100, checkpoint_dir=tmp_path,
                callbacks=[budget])
    assert [row["epoch"] for row in first.epochs] == [0]
    rest = fit(PPCA(6, 2), x, epochs=3, batch_size=100, checkpoint_dir=tmp_path, resume=True,
               callbacks=[TimeBudget(minutes=None)])
    assert [row["epoch"] for row in rest.epochs] == [0, 1, 2]
    with pytest.raises(ValueError, match="minutes must be positive"):
        TimeBudget(minutes=0)


def test_callbacks_see_the_epoch_row():
    seen = []
    fit(PPCA(6, 2), ppca_data().float(), epochs=2, batch_size=100,
        callbacks=[lambda info: seen.append((info.epoch, info.row["loss"]))])
    assert [epoch for epoch, _ in seen] == [0, 1]
    assert all(loss == loss and loss != 0.0 for _, loss in seen)


def test_numpy_data_trains_as_the_same_tensors():
    x = ppca_data(n=100).double()  # float64, as NumPy makes it
    torch.manual_seed(0)
    from_tensor = fit(PPCA(6, 2), x.float(), epochs=2, batch_size=30)
    torch.manual_seed(0)
    pair = (x.numpy(), torch.zeros(100, dtype=torch.int32).numpy())
    two = TwoStreamModel(6, 2)
    from_numpy = fit(two, {"data": pair}, epochs=2, batch_size=30)
    # Floating arrays take the model's dtype (float32 here), integer arrays int64: the same
    # tensors, seeds and batches, hence the same losses to the last bit.
    assert from_numpy.losses == from_tensor.losses


def test_a_model_class_is_a_type_error_naming_the_fix():
    with pytest.raises(TypeError, match=r"class PPCA, not a model.*fit\(PPCA\(\.\.\.\), data\)"):
        fit(PPCA, ppca_data(n=20), epochs=1)


def test_zero_epochs_returns_an_empty_history(tmp_path):
    ppca = PPCA(6, 2)
    before = {k: v.clone() for k, v in ppca.state_dict().items()}
    history = fit(ppca, ppca_data(n=20), epochs=0, checkpoint_dir=tmp_path)
    assert history.epochs == [] and history.losses == [] and history.last_checkpoint is None
    assert all(torch.equal(v, before[k]) for k, v in ppca.state_dict().items())
    assert not ppca.training and list(tmp_path.iterdir()) == []


class IgnoresSubsample(PPCA):
    """Plates over all N rows whatever subsample says: every step sees the whole data."""

    def model(self, x, subsample=None):
        super().model(x, None)

    def guide(self, x, subsample=None):
        super().guide(x, None)


class UnscaledBatch(PPCA):
    """Selects the batch's rows but plates over them alone (size M, not N): no N/M scale."""

    def model(self, x, subsample=None):
        super().model(x[subsample], None)

    def guide(self, x, subsample=None):
        super().guide(x[subsample], None)


@pytest.mark.parametrize("model, seen", [(IgnoresSubsample, "100 rows of 100"),
                                         (UnscaledBatch, "25 rows of 25")])
def test_a_model_that_ignores_subsample_is_warned_once(model, seen):
    with pytest.warns(SubsampleWarning, match=f"plate 'data' has {seen}, but fit gave it a batch "
                      "of 25 rows of 100.*size=N, subsample=subsample") as caught:
        fit(model(6, 2), ppca_data(n=100), epochs=2, batch_size=25)
    assert len(caught) == 1
    # The whole data as one batch is no evidence either way: no warning (errors in this suite).
    fit(model(6, 2), ppca_data(n=100), epochs=1, batch_size=100)


def test_a_resumed_run_keeps_the_best_epoch_and_its_checkpoint(tmp_path):
    x = ppca_data(n=40).float()
    scores = [1.0, 5.0, 2.0, 3.0]  # best at epoch 1, before the interruption

    def run(folder, epochs, resume=False):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        return fit(PPCA(6, 2), x, epochs=epochs, batch_size=20, checkpoint_dir=folder,
                   resume=resume, callbacks=[lambda end: {"score": scores[end.epoch]}],
                   select_metric="score")

    whole = run(tmp_path / "whole", 4)
    run(tmp_path / "parts", 2)
    resumed = run(tmp_path / "parts", 4, resume=True)
    assert whole.best["epoch"] == 1
    timeless = [{k: v for k, v in h.best.items() if k != "seconds"} for h in (whole, resumed)]
    assert timeless[0] == timeless[1]
    assert resumed.best_checkpoint == tmp_path / "parts" / "best.pt"
    assert resumed.last_checkpoint == tmp_path / "parts" / "last.pt"
    kept = [read_checkpoint(h.best_checkpoint) for h in (whole, resumed)]
    assert kept[0]["epoch"] == kept[1]["epoch"] == 2  # saved at the end of epoch 1
    for name, value in kept[0]["model_state"].items():
        assert torch.equal(kept[1]["model_state"][name], value), name


def test_the_epoch_line_is_short_and_the_history_keeps_every_metric(caplog):
    many = {f"held_out_metric_number_{i}": float(i) / 3 for i in range(8)}
    caplog.set_level("INFO", logger="pyrovae.infer.trainer")
    history = fit(PPCA(6, 2), ppca_data(n=40).float(), epochs=2, batch_size=20,
                  callbacks=[lambda end: many], select_metric="held_out_metric_number_5")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert len(lines) == 2 and all(len(line) <= 100 for line in lines), lines
    row = history.epochs[1]
    assert lines[1] == (f"epoch 1: loss/example {row['loss_per_example']:.5g}, "
                        f"held_out_metric_number_5 1.6667, lr 0.001, {row['seconds']:.3g} s")
    assert set(many) | {"epoch", "steps", "loss", "loss_per_example", "lr", "seconds"} == set(row)


def test_a_best_pt_from_another_branch_of_the_run_is_not_named_the_best(tmp_path, caplog):
    x = ppca_data(n=40).float()

    def run(scores, epochs, resume=False):
        return fit(PPCA(6, 2), x, epochs=epochs, batch_size=20, checkpoint_dir=tmp_path,
                   resume=resume, callbacks=[lambda end: {"score": scores[end.epoch]}],
                   select_metric="score")

    run([1.0, 5.0], 2)
    older = tmp_path / "older.pt"
    older.write_bytes((tmp_path / "last.pt").read_bytes())
    run([1.0, 5.0, 2.0, 9.0], 4, resume=True)  # best.pt now holds epoch 3
    # another test's `pyrovae -q` may have left the package's logger at ERROR
    with caplog.at_level(logging.WARNING, logger="pyrovae"):
        rewound = run([1.0, 5.0, 2.0, 3.0], 4, resume=older)  # back to epoch 2: best is 1
    assert rewound.best["epoch"] == 1 and rewound.best_checkpoint is None
    assert "holds epoch 3, not the resumed run's best epoch 1" in caplog.text
    assert read_checkpoint(tmp_path / "best.pt")["best"]["epoch"] == 3  # left as it was
