"""The compiled training step: on CPU it runs eagerly and must reproduce the plain loop exactly.

The reference is ``fit``'s loop with Pyro's own objective (``loss.backward(); optimizer.step()``).
Both runs start from the same weights and seeds in float64, so they draw the same noise and the
parameters agree to rounding (1e-9) after every step. The CUDA graph itself is checked by the
GPU-only test at the end (skipped here).
"""

import copy

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyrovae.infer import make_objective, param_scope
from pyrovae.infer.compiled import CompiledStep, ScalarConstantsOnDevice, make_capturable_optimizer
from pyrovae.infer.graph_safe import GraphSafeELBO
from pyrovae.infer.objectives import EnumELBO
from pyrovae.models import M2, VAE

N, D, B = 24, 6, 8


def _grey():
    return torch.rand(N, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _binary():
    return (_grey() < 0.5).to(torch.get_default_dtype())


def _batches(num_steps, n=N, b=B, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randperm(n, generator=gen)[:b] for _ in range(num_steps)]


def _loss_fn(objective, module):
    def loss_of(tensors, idx):
        return objective.differentiable_loss(module.model, module.guide, *tensors, subsample=idx)

    return loss_of


def _plain_run(module, objective, streams, steps, lr_at=None, clip_norm=None, binarize=False):
    """fit's loop with Pyro's objective; ``steps`` is a list of per-stream index batches."""
    optim = make_capturable_optimizer(module.parameters(), lr=0.01)
    loss_of, losses = _loss_fn(objective, module), []
    pyro.set_rng_seed(3)
    with param_scope(module):
        for k, batches in enumerate(steps):
            if lr_at is not None and k == lr_at[0]:
                optim.param_groups[0]["lr"] = lr_at[1]
            tensors = streams
            if binarize:
                binary = torch.zeros_like(streams[0][0])
                binary[batches[0]] = torch.bernoulli(streams[0][0][batches[0]])
                tensors = [(binary, *streams[0][1:]), *streams[1:]]
            loss = sum(loss_of(t, idx) for t, idx in zip(tensors, batches, strict=True))
            optim.zero_grad(set_to_none=True)
            loss.backward()
            if clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(list(module.parameters()), clip_norm)
            optim.step()
            losses.append(loss.detach())
    return torch.stack(losses)


def _compiled_run(module, objective, streams, steps, lr_at=None, clip_norm=None, binarize=False):
    optim = make_capturable_optimizer(module.parameters(), lr=0.01)
    step = CompiledStep(
        _loss_fn(objective, module), optim, clip_norm=clip_norm, binarize=[0] if binarize else []
    )
    assert not step.graph  # no CUDA here: the eager path
    losses = []
    pyro.set_rng_seed(3)
    with param_scope(module):
        for k, batches in enumerate(steps):
            if lr_at is not None and k == lr_at[0]:
                optim.param_groups[0]["lr"] = lr_at[1]
            losses.append(step(streams, batches).clone())
    return torch.stack(losses)


def _assert_same_parameters(a, b):
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-9, atol=1e-9, msg=name)


@pytest.mark.parametrize("binarize", [False, True])
def test_vae_eager_step_is_the_plain_loop(binarize):
    """Pyro's Trace_ELBO loop vs the compiled step with the graph-safe ELBO (2 particles),
    with a learning-rate change after 3 steps, gradient clipping and optional binarisation."""
    torch.set_default_dtype(torch.float64)
    x = _grey() if binarize else _binary()
    reference = VAE(D, 2, (5,))
    ours, initial = copy.deepcopy(reference), copy.deepcopy(reference)
    steps = [[b] for b in _batches(6)]
    options = dict(lr_at=(3, 0.003), clip_norm=5.0, binarize=binarize)
    plain = _plain_run(
        reference,
        Trace_ELBO(num_particles=2, vectorize_particles=True, max_plate_nesting=1),
        [(x,)],
        steps,
        **options,
    )
    compiled = _compiled_run(ours, GraphSafeELBO(2), [(x,)], steps, **options)
    torch.testing.assert_close(compiled, plain, rtol=1e-9, atol=1e-9)
    _assert_same_parameters(reference, ours)
    pairs = zip(ours.parameters(), initial.parameters(), strict=True)
    assert all(not torch.equal(a, b) for a, b in pairs)  # it trained


def test_m2_two_streams_eager_step_is_the_plain_loop():
    """M2 with an unlabelled and a labelled stream: TraceEnum_ELBO vs the graph-safe one."""
    torch.set_default_dtype(torch.float64)
    x = _binary()
    y = torch.arange(N) % 3
    streams = [(x,), (x[:12], y[:12])]
    steps = list(zip(_batches(4), _batches(4, n=12, b=6, seed=2), strict=True))
    reference = M2(data_dim=D, num_classes=3, latent_dim=2, hidden_sizes=(5,), alpha=3.0)
    ours = copy.deepcopy(reference)
    plain = _plain_run(reference, EnumELBO(max_plate_nesting=1), streams, steps)
    compiled = _compiled_run(ours, make_objective("enum", graph_safe=True), streams, steps)
    torch.testing.assert_close(compiled, plain, rtol=1e-9, atol=1e-9)
    _assert_same_parameters(reference, ours)


def test_several_steps_per_call_are_the_single_steps():
    """Batches [K, B] run K steps in one call and return the K losses."""
    torch.set_default_dtype(torch.float64)
    x = _binary()
    batches = _batches(4)
    reference = VAE(D, 2, (5,))
    ours = copy.deepcopy(reference)
    single = _compiled_run(reference, GraphSafeELBO(), [(x,)], [[b] for b in batches])
    multi = _compiled_run(
        ours, GraphSafeELBO(), [(x,)], [[torch.stack(batches[:2])], [torch.stack(batches[2:])]]
    )
    torch.testing.assert_close(multi.reshape(-1), single, rtol=1e-9, atol=1e-9)
    _assert_same_parameters(reference, ours)


def test_reduce_gradients_runs_between_backward_and_the_update():
    """The hook sees every step's fresh gradients before clipping and the optimiser step:
    halving them in place halves SGD's update (data parallelism's all-reduce plugs in here)."""
    torch.set_default_dtype(torch.float64)
    x = _binary()
    halved, plain = VAE(D, 2, (5,)), VAE(D, 2, (5,))
    plain.load_state_dict(halved.state_dict())
    seen = []

    def halve(params):
        seen.append(all(p.grad is not None for p in params))
        for p in params:
            p.grad.mul_(0.5)

    for module, hook, lr in ((halved, halve, 0.2), (plain, None, 0.1)):
        optim = torch.optim.SGD(module.parameters(), lr=lr)
        step = CompiledStep(_loss_fn(GraphSafeELBO(), module), optim, reduce_gradients=hook)
        pyro.set_rng_seed(3)
        with param_scope(module):
            for batch in _batches(2):
                step([(x,)], [batch])
    assert seen == [True, True]
    _assert_same_parameters(halved, plain)


def test_resume_from_state_dict_continues_the_run():
    """3 steps, save model + step.state_dict(), rebuild, load, 3 more == 6 steps straight."""
    torch.set_default_dtype(torch.float64)
    x = _binary()
    batches = [[b] for b in _batches(6)]
    straight = VAE(D, 2, (5,))
    first = copy.deepcopy(straight)
    _compiled_run(straight, GraphSafeELBO(), [(x,)], batches)

    with param_scope(first):
        optim = make_capturable_optimizer(first.parameters(), lr=0.01)
        step = CompiledStep(_loss_fn(GraphSafeELBO(), first), optim)
        pyro.set_rng_seed(3)
        for b in batches[:3]:
            step([(x,)], b)
        saved = copy.deepcopy((first.state_dict(), step.state_dict(), torch.get_rng_state()))
    resumed = VAE(D, 2, (5,))
    resumed.load_state_dict(saved[0])
    with param_scope(resumed):
        optim = make_capturable_optimizer(resumed.parameters(), lr=0.5)  # lr comes from the state
        step = CompiledStep(_loss_fn(GraphSafeELBO(), resumed), optim)
        step.load_state_dict(saved[1])
        torch.set_rng_state(saved[2])
        for b in batches[3:]:
            step([(x,)], b)
    assert optim.param_groups[0]["lr"] == 0.01
    _assert_same_parameters(straight, resumed)


def test_scalar_constants_become_fill_kernels():
    """Inside the mode, ``torch.tensor(number, device=...)`` is made by ``torch.full``."""
    seen = []

    class Record(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    with Record(), ScalarConstantsOnDevice("cpu"):
        values = [torch.tensor(v, device="cpu") for v in (1.5, 3, True)]
        typed = torch.as_tensor(2, dtype=torch.float64, device="cpu")
        untouched = torch.tensor([1.0, 2.0], device="cpu")
    assert seen.count(torch.full) == 4
    assert [v.dtype for v in values] == [torch.get_default_dtype(), torch.long, torch.bool]
    assert [v.item() for v in values] == [1.5, 3, True] and values[0].dim() == 0
    assert typed.dtype == torch.float64 and typed.item() == 2.0
    assert untouched.tolist() == [1.0, 2.0]


def test_arguments_are_checked():
    module = VAE(D, 2, (5,))
    optim = make_capturable_optimizer(module.parameters(), lr=0.01)
    loss_of = _loss_fn(GraphSafeELBO(), module)
    with pytest.raises(ValueError, match="CUDA"):
        CompiledStep(loss_of, optim, graph=True)
    with pytest.raises(ValueError, match="warmup_steps"):
        CompiledStep(loss_of, optim, warmup_steps=0)
    with pytest.raises(ValueError, match="adam"):
        make_capturable_optimizer(module.parameters(), lr=0.01, name="sgd")
    step = CompiledStep(loss_of, optim)
    x = _binary().float()
    with pytest.raises(ValueError, match="1-D index tensors"):
        step([(x,)], [torch.zeros(2, 2, 2, dtype=torch.long)])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_step_matches_the_eager_step():
    """GPU only: the captured VAE step replays the eager step's arithmetic and noise (the
    default CUDA generator's Philox offsets advance the same way), in float64 to 1e-6."""
    torch.set_default_dtype(torch.float64)
    device = torch.device("cuda")
    x = _binary().to(device)
    batches = [[b.to(device)] for b in _batches(8)]
    runs = []
    for graph in (False, True):
        module = VAE(D, 2, (5,)).to(device)
        torch.manual_seed(0)
        for p in module.parameters():
            p.data.normal_(0, 0.3)
        optim = make_capturable_optimizer(module.parameters(), lr=0.01)
        step = CompiledStep(_loss_fn(GraphSafeELBO(), module), optim, graph=graph, warmup_steps=2)
        pyro.set_rng_seed(3)
        with param_scope(module), pyro.validation_enabled(False):
            losses = torch.stack([step([(x,)], b).clone() for b in batches])
        runs.append((losses, [p.detach().clone() for p in module.parameters()]))
    torch.testing.assert_close(runs[1][0], runs[0][0], rtol=1e-6, atol=1e-6)
    for a, b in zip(runs[0][1], runs[1][1], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)


def test_graph_mode_bookkeeping_without_a_gpu():
    """What graph mode does around the graph, checked on CPU tensors without capturing: the
    learning rate lives in a tensor the graph reads and follows assignments and ``set_lr``;
    ``load_state_dict`` is detected; replaced data tensors are copied into one static buffer."""
    module = VAE(D, 2, (5,))
    optim = make_capturable_optimizer(module.parameters(), lr=0.01)
    step = CompiledStep(_loss_fn(GraphSafeELBO(), module), optim)
    step.graph = True  # the bookkeeping only: nothing below captures or steps
    step._adopt_optimizer()
    lr = optim.param_groups[0]["lr"]
    assert isinstance(lr, torch.Tensor) and lr.item() == pytest.approx(0.01)
    assert optim.param_groups[0]["capturable"]
    optim.param_groups[0]["lr"] = 0.002  # as fit's schedule assigns it
    step._adopt_optimizer()
    assert optim.param_groups[0]["lr"] is lr and lr.item() == pytest.approx(0.002)
    step.set_lr(0.003)
    assert optim.param_groups[0]["lr"] is lr and lr.item() == pytest.approx(0.003)
    saved = step.state_dict()
    assert saved["param_groups"][0]["lr"] == pytest.approx(0.003)
    assert saved["param_groups"][0]["capturable"] is False
    slot = step._slots[(B,)] = step._new_slot([torch.arange(B)])
    slot.calls, slot.graph = 5, object()  # as if captured
    saved["param_groups"][0]["lr"] = 0.004
    step.load_state_dict(saved)  # new optimiser state: the graph must be captured again
    assert slot.graph is None and slot.calls == 0
    assert optim.param_groups[0]["lr"].item() == pytest.approx(0.004)

    x1, x2, x3 = (torch.full((N, D), float(v)) for v in (1, 2, 3))
    assert step._bind([(x1,)])[0][0] is x1  # the caller's tensor, no copy
    slot.graph = object()
    static = step._bind([(x2,)])[0][0]  # replaced: a static copy, graphs dropped
    assert static is not x2 and torch.equal(static, x2) and slot.graph is None
    slot.graph = object()
    again = step._bind([(x3,)])[0][0]  # replaced again: copied into the same buffer
    assert again is static and torch.equal(again, x3) and slot.graph is not None


# ---------------------------------------------------------------- fit(compiled=True)
def _fit_run(compiled, tmp_path=None, epochs=2, resume=False, **kwargs):
    from pyrovae import fit
    from pyrovae.models import VAE

    torch.manual_seed(0)
    x = (torch.rand(96, 12, generator=torch.Generator().manual_seed(1)) > 0.5).double()
    vae = VAE(data_dim=12, latent_dim=3, hidden_sizes=[8]).double()
    history = fit(vae, x, epochs=epochs, batch_size=32, lr=0.01, compiled=compiled,
                  checkpoint_dir=tmp_path, resume=resume, **kwargs)
    return history, vae


@pytest.mark.parametrize("objective", ["elbo", "meanfield"])
def test_fit_compiled_on_cpu_trains_like_the_eager_step(objective):
    # The graph-safe objective equals Pyro's to 1e-6 with the same noise (test_graph_safe), and
    # the compiled step draws the same noise, so whole runs agree to accumulated rounding.
    eager, vae_e = _fit_run(False, objective=objective)
    compiled, vae_c = _fit_run(True, objective=objective)
    assert compiled.losses == pytest.approx(eager.losses, rel=1e-9)
    for (name, a), (_, b) in zip(vae_e.named_parameters(), vae_c.named_parameters(), strict=True):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12), name


def test_fit_compiled_resumes_to_the_uninterrupted_run(tmp_path):
    straight, vae_s = _fit_run(True, epochs=3)
    _fit_run(True, tmp_path, epochs=1)
    resumed, vae_r = _fit_run(True, tmp_path, epochs=3, resume=True)
    assert resumed.losses == pytest.approx(straight.losses, rel=1e-12)
    for a, b in zip(vae_s.parameters(), vae_r.parameters(), strict=True):
        assert torch.equal(a, b)


def test_fit_compiled_refuses_what_it_cannot_capture():
    with pytest.raises(ValueError, match="exclude each other"):
        _fit_run(True, jit=True)
    with pytest.raises(ValueError, match="graph-safe objective"):
        from pyrovae.infer import make_objective

        _fit_run(True, objective=make_objective("elbo"))
