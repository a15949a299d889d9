"""Score-function versus reparameterisation gradients of the VAE's ELBO.

For one model and one fixed batch, many independent draws of the ELBO's gradient with respect
to the encoder's parameters, under both estimators: the reparameterisation trick (the guide's
``z = mu + sigma * eps``) and the score function (REINFORCE, no baseline: the same guide with
``has_rsample=False``, so Pyro's ``Trace_ELBO`` differentiates ``log q`` instead). Reported, per
number of particles L: the total variance (sum over coordinates of
the per-coordinate variance), the squared norm of the mean gradient, their ratio, the median
per-coordinate signal-to-noise ratio |ref|/sd (over coordinates with any gradient), and the
cosine between each estimator's mean gradient and the reference (the mean reparameterisation
gradient at the largest L; both estimators are unbiased for the same gradient).
At initialisation and after training.

References:
    J. Paisley, D. Blei and M. Jordan. Variational Bayesian inference with stochastic search.
    ICML 2012.  D. P. Kingma and M. Welling. Auto-encoding variational Bayes. ICLR 2014.
    S. Mohamed, M. Rosca, M. Figurnov and A. Mnih. Monte Carlo gradient estimation in machine
    learning. JMLR 2020.

Example::

    python -m experiments.vae.gradient_variance --epochs 5 --out results/vae/gradient_variance
"""

from __future__ import annotations

import pyro
import torch
from pyro.infer import Trace_ELBO

from experiments.figures import pyplot, save_figure
from experiments.vae import common as vae
from pyrovae.infer import param_scope
from pyrovae.runs.provenance import evaluates, write_json
from pyrovae.runs.script import run_script

ESTIMATORS = ("reparameterisation", "score_function")


def gradient_draws(model, x: torch.Tensor, num_particles: int, draws: int) -> torch.Tensor:
    """``draws`` independent gradients of the ELBO loss w.r.t. the encoder: [draws, P]."""
    elbo = Trace_ELBO(num_particles=num_particles, vectorize_particles=num_particles > 1,
                      max_plate_nesting=1)
    out = []
    with param_scope(model):
        params = list(model.encoder.parameters())
        for _ in range(draws):
            loss = elbo.differentiable_loss(model.model, model.guide, x)
            grads = torch.autograd.grad(loss, params)
            out.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(out)


def summarise(grads: torch.Tensor, reference: torch.Tensor) -> dict:
    """Spread of gradient draws [R, P] around their mean, relative to ``reference`` [P]."""
    mean, var = grads.mean(0), grads.var(0)
    live = var > 0  # weights from pixels that are 0 in the whole batch get no gradient at all
    snr = reference[live].abs() / var[live].sqrt()
    return dict(
        total_variance=float(var.sum()),
        relative_variance=float(var.sum() / reference.pow(2).sum()),
        median_snr=float(snr.median()),
        cosine_to_reference=float(torch.nn.functional.cosine_similarity(mean, reference, dim=0)),
    )


def compare(model, twin, x, particles, draws) -> list[dict]:
    """Both estimators for each L: ``twin`` is ``model`` with a score-function guide.

    The reference gradient (the best estimate of the true one) is the mean of the
    reparameterisation draws at the largest L; ratios and SNRs are relative to it, since a
    score-function mean over a few hundred draws is mostly noise.
    """
    draws_by = {(name, num_particles): gradient_draws(m, x, num_particles, draws)
                for num_particles in particles
                for name, m in zip(ESTIMATORS, (model, twin), strict=True)}
    reference = draws_by[(ESTIMATORS[0], max(particles))].mean(0)
    return [dict(estimator=name, num_particles=num_particles, **summarise(g, reference))
            for (name, num_particles), g in draws_by.items()]


def score_function_twin(model, args, data):
    twin = vae.make_vae(args, data, model.latent_dim, reparameterized=False)
    twin.load_state_dict(model.state_dict())
    return twin.eval()


def plot(rows_by_stage: dict, path) -> None:
    fig, axes = pyplot().subplots(1, 2, figsize=(10, 4))
    styles = {"reparameterisation": "o-", "score_function": "s--"}
    for stage, rows in rows_by_stage.items():
        for name in ESTIMATORS:
            sel = [r for r in rows if r["estimator"] == name]
            ls = [r["num_particles"] for r in sel]
            label = f"{name.replace('_', ' ')} ({stage})"
            axes[0].loglog(ls, [r["total_variance"] for r in sel], styles[name], label=label)
            axes[1].loglog(ls, [r["relative_variance"] for r in sel], styles[name], label=label)
    axes[0].set_title("total variance of the encoder gradient")
    axes[1].set_title("variance / squared norm of the reference gradient")
    for ax in axes:
        ax.set_xlabel("particles L per data point")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    save_figure(fig, path)


def markdown(rows_by_stage: dict) -> str:
    lines = ["| stage | estimator | L | total variance | variance / ‖ref‖² | median SNR "
             "| cos(mean, ref) |", "|---|---|---:|---:|---:|---:|---:|"]
    for stage, rows in rows_by_stage.items():
        for r in rows:
            lines.append(
                f"| {stage} | {r['estimator']} | {r['num_particles']} | {r['total_variance']:.3g}"
                f" | {r['relative_variance']:.3g} | {r['median_snr']:.3g}"
                f" | {r['cosine_to_reference']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = vae.script_parser(__doc__.splitlines()[0], out="runs/vae_gradient_variance", epochs=5,
                           evaluation=False)
    parser.add_argument("--latent-dim", type=int, default=20)
    parser.add_argument("--batch", type=int, default=100, help="images in the fixed batch")
    parser.add_argument("--draws", type=int, default=200, help="gradient draws per setting")
    parser.add_argument("--particles", type=int, nargs="+", default=[1, 10, 100])
    args = parser.parse_args(argv)
    out = vae.setup(args)
    data = vae.data_from_args(args)
    x = data.test_x[: args.batch]

    pyro.set_rng_seed(args.seed)
    trained, history, wall = vae.train_vae(args, data, args.latent_dim, out / "model.pt")
    if not evaluates():
        return
    after = compare(trained, score_function_twin(trained, args, data), x, args.particles,
                    args.draws)
    # The initial model again: the one train_vae started from (same seed, same construction).
    pyro.set_rng_seed(args.seed)
    initial = vae.make_vae(args, data, args.latent_dim)
    rows_by_stage = {
        "init": compare(initial, score_function_twin(initial, args, data), x, args.particles,
                        args.draws),
        f"after {len(history)} epochs": after,
    }
    plot(rows_by_stage, out / "gradient_variance.png")
    (out / "table.md").write_text(markdown(rows_by_stage))
    write_json(out / "metrics.json", dict(
        **vae.run_header(args, data), latent_dim=args.latent_dim, batch=args.batch,
        draws=args.draws,
        epochs=len(history), train_seconds=wall, results=rows_by_stage,
    ))


if __name__ == "__main__":
    run_script(main)
