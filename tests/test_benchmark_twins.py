"""The benchmarks' plain-PyTorch twins compute the same loss as pyrovae's models.

Both losses are single-sample Monte-Carlo estimates with different noise, so they are compared
in expectation: the mean of many draws of each, within 4 standard errors of their difference.
The guides' scales are set near 1e-4 first, so that z is almost deterministic and only the
chi-square noise of log q(z) is left: the comparison then resolves differences of ~1 nat.
"""

import math
import sys

import pyro
import pytest
import torch
from conftest import REPO

from pyrovae.infer import make_objective, param_scope
from pyrovae.models import M2, PPCA
from pyrovae.models.vae import VAE

sys.path.insert(0, str(REPO / "benchmarks"))
from plain_models import PlainM2, PlainPPCA, PlainVAE  # noqa: E402

DRAWS = 400


def _agree(pyro_draws, plain_draws):
    a, b = torch.stack(pyro_draws), torch.stack(plain_draws)
    stderr = math.sqrt(a.var() / len(a) + b.var() / len(b))
    assert abs(a.mean() - b.mean()) < 4 * stderr + 1e-6 * abs(a.mean())


def _sharpen(head):
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-20.0)  # softplus(-20) + 1e-4 ~ 1e-4


def _binary(n, d, seed=0):
    return (torch.rand(n, d, generator=torch.Generator().manual_seed(seed)) < 0.4).float()


def test_vae_twin():
    x = _binary(30, 12)
    vae = VAE(12, 3, hidden_sizes=(8,))
    _sharpen(vae.encoder.raw_scale)
    plain = PlainVAE(vae)
    idx = torch.arange(10)
    elbo = make_objective("elbo")
    with param_scope(vae), torch.no_grad():
        ours = [
            elbo.differentiable_loss(vae.model, vae.guide, x, subsample=idx) for _ in range(DRAWS)
        ]
    theirs = [plain.loss(x[idx], 3.0).detach() for _ in range(DRAWS)]
    _agree(ours, theirs)


def test_ppca_twin():
    x = torch.randn(30, 5, generator=torch.Generator().manual_seed(1))
    ppca = PPCA(5, 2, init_scale=0.5)
    plain = PlainPPCA(ppca)
    elbo = make_objective("elbo")
    with param_scope(ppca), torch.no_grad():
        ours = [elbo.differentiable_loss(ppca.model, ppca.guide, x) for _ in range(DRAWS)]
    theirs = [plain.loss(x, 1.0).detach() for _ in range(DRAWS)]
    _agree(ours, theirs)


def test_m2_twin():
    x = _binary(40, 12, seed=2)
    y = torch.arange(20) % 4
    m2 = M2(12, 4, 3, hidden_sizes=(8,), alpha=7.0)
    _sharpen(m2.encoder.raw_scale)
    plain = PlainM2(m2)
    iu, il = torch.arange(5), torch.arange(8)
    enum = make_objective("enum")
    pyro.set_rng_seed(0)
    with param_scope(m2):  # (TraceEnum_ELBO refuses to run under no_grad)
        ours = [
            (
                enum.differentiable_loss(m2.model, m2.guide, x, subsample=iu)
                + enum.differentiable_loss(m2.model, m2.guide, x[:20], y, subsample=il)
            ).detach()
            for _ in range(DRAWS)
        ]
    theirs = [
        plain.loss(x[iu], 40 / 5, x[:20][il], y[il], 20 / 8, 20).detach() for _ in range(DRAWS)
    ]
    _agree(ours, theirs)


@pytest.mark.slow
def test_benchmark_script_quick_run(tmp_path, mnist_root):
    import subprocess

    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "run_benchmarks.py"),
            "--quick",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "benchmarks.json").exists() and "ratio" in (
        tmp_path / "table.md"
    ).read_text()
