"""Evaluate saved VAEs: test ELBO (reconstruction, KL) and the K-sample importance-sampled NLL.

Loads each checkpoint with ``pyrovae.load_checkpoint`` and scores the test images, binarised
exactly as in training scripts (one fixed stochastic binarisation, seed 1234) for Bernoulli
models. ``metrics.json`` is rewritten after every model.

References:
    Y. Burda, R. Grosse and R. Salakhutdinov. Importance weighted autoencoders. ICLR 2016.

Example::

    python -m experiments.vae.evaluate --checkpoints runs/vae_headline/elbo/last.pt \
        --num-samples 5000 --out runs/vae_evaluate
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pyro

import pyrovae
from pyrovae.infer.evaluation import evaluate
from pyrovae.runs.data import image_set
from pyrovae.runs.provenance import provenance, write_json
from pyrovae.runs.script import add_run_arguments, run_script, start_run


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", nargs="+", required=True)
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--test-size", type=int, default=None, help="first N test images")
    parser.add_argument("--num-samples", type=int, default=5000)
    parser.add_argument("--elbo-samples", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--sample-chunk", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    add_run_arguments(parser, out="runs/vae_evaluate", threads=1)
    args = parser.parse_args(argv)
    device = start_run(args)
    pyro.enable_validation(False)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    metrics = dict(**provenance(device), dataset=args.dataset, models={})
    data = {}
    for path in args.checkpoints:
        model = pyrovae.load_checkpoint(path, map_location=device)
        binarized = model.config.get("likelihood", "bernoulli") == "bernoulli"
        if binarized not in data:
            data[binarized] = image_set(
                args.dataset, binarization="dynamic" if binarized else "grey", train_size=1,
                test_size=args.test_size, root=args.data_root, device=device)
        x = data[binarized].test_x
        model.check_data(x)
        pyro.set_rng_seed(args.seed)
        started = time.perf_counter()
        result = evaluate(model, x, num_samples=args.num_samples, elbo_samples=args.elbo_samples,
                          sample_chunk=args.sample_chunk, batch_size=args.batch_size)
        result["seconds"] = time.perf_counter() - started
        result["model_config"] = model.config
        metrics["models"][str(path)] = result
        write_json(out / "metrics.json", metrics)


if __name__ == "__main__":
    run_script(main)
