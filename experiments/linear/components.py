"""Linear latent-variable models on images: the components of PCA, factor analysis, ICA and NMF.

Fits the four models to the same training images, K components each, and draws their
components side by side (``components.png``, one row per model), with the test-set fit of each
in ``metrics.json`` (rewritten after every epoch): the ELBO per image, the exact
log-likelihood where there is one (PPCA, FA), and the squared reconstruction error of the
posterior mean. Checkpoints go to ``OUT/<model>/last.pt``.

    python -m experiments.linear.components --dataset mnist --components 16 --out DIR

References:
    M. E. Tipping and C. M. Bishop. Probabilistic principal component analysis. JRSS B, 1999.
    A. Hyvarinen and E. Oja. Independent component analysis: algorithms and applications.
    Neural Networks 13, 2000.
    D. D. Lee and H. S. Seung. Learning the parts of objects by non-negative matrix
    factorization. Nature 401, 1999.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from pyro.infer import Trace_ELBO

from experiments.figures import pyplot, save_figure
from pyrovae import fit
from pyrovae.data import load_dataset
from pyrovae.infer import param_scope
from pyrovae.models.factor_analysis import FactorAnalysis
from pyrovae.models.ica import ICA
from pyrovae.models.nmf import NMF, to_counts
from pyrovae.models.pca import pca_reconstruct, pca_svd
from pyrovae.models.ppca import fit_closed_form
from pyrovae.models.ppca import log_marginal as ppca_log_marginal
from pyrovae.runs.launch import parallel_options
from pyrovae.runs.provenance import evaluates, is_main, provenance, write_json
from pyrovae.runs.script import add_run_arguments, run_script, start_run

ROW_TITLES = {"pca": "PCA", "fa": "factor analysis", "ica": "ICA (Laplace)", "nmf": "NMF (Poisson)"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist", "digits"])
    p.add_argument("--components", type=int, default=16, help="K, for every model")
    p.add_argument("--n-train", type=int, default=10000, help="random training images used")
    p.add_argument("--n-test", type=int, default=None, help="first test images used (all)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--min-noise", type=float, default=1e-3,
                   help="floor on FA's and ICA's noise variances (constant border pixels)")
    p.add_argument("--count-scale", type=float, default=10.0,
                   help="NMF sees counts round(count_scale * pixel)")
    p.add_argument("--nmf-hidden", type=int, default=128)
    p.add_argument("--elbo-particles", type=int, default=10)
    p.add_argument("--models", nargs="+", default=["fa", "ica", "nmf"],
                   choices=["fa", "ica", "nmf"])
    p.add_argument("--seed", type=int, default=0)
    add_run_arguments(p, out="runs/linear_components")
    return p.parse_args(argv)


@torch.no_grad()
def elbo_per_example(module, x: torch.Tensor, particles: int, chunk: int = 1000) -> float:
    """The Monte-Carlo ELBO averaged over the rows of ``x``, from the module's own traces."""
    objective = Trace_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=1)
    total = 0.0
    with param_scope(module):
        for start in range(0, x.shape[0], chunk):
            total -= objective.loss(module.model, module.guide, x[start : start + chunk])
    return total / x.shape[0]


@torch.no_grad()
def reconstruction(name: str, module, x: torch.Tensor, count_scale: float) -> torch.Tensor:
    """The model's mean of ``x`` given the guide's mean of the latents, in pixel units."""
    if name == "fa":
        z, _ = module.guide_posterior(x)
        W, mu, _ = module.params()
        return z @ W.T + mu
    if name == "ica":
        A, mu, _ = module.params()
        return module.sources(x) @ A.T + mu
    counts = to_counts(x, count_scale)
    return module.activations(counts) @ module.factors() / count_scale


def components_of(name: str, module) -> torch.Tensor:
    """Component images [K, D], largest first; signed ones flipped to a positive peak."""
    if name == "fa":
        comps = module.params().W.T
    elif name == "ica":
        comps = module.params().A.T
    else:
        comps = module.factors()
    comps = comps[comps.norm(dim=1).argsort(descending=True)]
    if name != "nmf":
        peak = comps.gather(1, comps.abs().argmax(1, keepdim=True))
        comps = comps * peak.sign()
    return comps


def build(name: str, args, d: int):
    k = args.components
    if name == "fa":
        return FactorAnalysis(d, k, min_noise=args.min_noise)
    if name == "ica":
        return ICA(d, k, min_noise=args.min_noise)
    return NMF(d, k, hidden_sizes=[args.nmf_hidden] if args.nmf_hidden else [])


def plot_components(rows: dict, image_shape, path: Path, title: str) -> None:
    k = max(len(c) for c in rows.values())
    fig, axes = pyplot().subplots(len(rows), k, figsize=(0.9 * k + 1.2, 1.0 * len(rows) + 0.5),
                             squeeze=False)
    for r, (name, comps) in enumerate(rows.items()):
        for c in range(k):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(comps):
                ax.axis("off")
                continue
            img = comps[c].reshape(image_shape).cpu().numpy()
            if name == "nmf":
                ax.imshow(img, cmap="gray_r", vmin=0, vmax=img.max())
            else:
                lim = abs(img).max()
                ax.imshow(img, cmap="RdBu_r", vmin=-lim, vmax=lim)
        axes[r, 0].set_ylabel(ROW_TITLES[name], rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path, dpi=110)


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = start_run(args)
    if is_main():
        args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    train = load_dataset(args.dataset, "train", device=device)
    test = load_dataset(args.dataset, "test", device=device)
    gen = torch.Generator().manual_seed(args.seed)
    n_train = min(args.n_train, len(train))
    x = train.x[torch.randperm(len(train), generator=gen)[:n_train].to(device)]
    x_test = test.x[: args.n_test] if args.n_test else test.x
    k, d = args.components, x.shape[1]
    metrics = dict(
        **provenance(device), dataset=args.dataset, components=k,
        n_train=n_train, n_test=len(x_test),
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, models={},
    )

    def save():
        write_json(args.out / "metrics.json", metrics)

    # The other ranks take part in every model's fit and evaluate nothing.
    evaluating = evaluates()
    rows = {}
    if evaluating:
        pca = pca_svd(x, k)
        ppca = fit_closed_form(x.double(), k)
        metrics["models"]["pca"] = dict(
            test_mse_per_pixel=float(((pca_reconstruct(x_test, pca) - x_test) ** 2).mean()),
            explained_variance=pca.explained_variance.tolist(),
            ppca_train_loglik=float(ppca_log_marginal(x.double(), ppca).mean()),
            ppca_test_loglik=float(ppca_log_marginal(x_test.double(), ppca).mean()),
        )
        rows["pca"] = pca.components
        save()

    for name in args.models:
        torch.manual_seed(args.seed)
        module = build(name, args, d).to(device)
        data, test_data = x, x_test
        if name == "nmf":
            data, test_data = to_counts(x, args.count_scale), to_counts(x_test, args.count_scale)
        module.initialise(data)
        entry = metrics["models"][name] = dict(config=module.config, curve=[])

        def log_epoch(end, entry=entry):
            entry["curve"].append(dict(epoch=end.epoch, loss_per_example=end.loss / n_train))
            save()

        started = time.perf_counter()
        fit(module, data, lr=args.lr, epochs=args.epochs, batch_size=args.batch_size,
            lr_schedule="cosine", seed=args.seed, callbacks=[log_epoch], device=device,
            checkpoint_dir=args.out / name, config=dict(experiment="linear_components"),
            **parallel_options(args))
        entry["train_seconds"] = time.perf_counter() - started
        if not evaluating:
            continue
        entry["test_elbo"] = elbo_per_example(module, test_data, args.elbo_particles)
        entry["test_mse_per_pixel"] = float(
            ((reconstruction(name, module, x_test, args.count_scale) - x_test) ** 2).mean()
        )
        if name == "fa":
            entry["train_loglik"] = float(module.log_marginal(x).mean())
            entry["test_loglik"] = float(module.log_marginal(x_test).mean())
        if name == "nmf":
            entry["note"] = f"ELBO of counts round({args.count_scale} * pixel): not comparable"
        rows[name] = components_of(name, module)
        save()

    if evaluating:
        plot_components(rows, train.image_shape, args.out / "components.png",
                        f"{args.dataset}: {k} components per model ({n_train} training images)")
    return metrics


if __name__ == "__main__":
    run_script(main)
