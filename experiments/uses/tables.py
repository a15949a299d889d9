"""Markdown tables of the ``uses`` experiments from their JSON files (for results/uses/README.md).

Example::

    python -m experiments.uses.tables results/uses/impute_*/impute.json \
        results/uses/anomaly/anomaly.json results/uses/denoise/denoise.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pyrovae.runs.provenance import read_json
from pyrovae.runs.script import run_script


def impute_table(payloads: list[dict]) -> str:
    lines = [
        "| pattern | missing | method | log p(x_mis \\| x_obs) (nats/image) | per pixel "
        "| class error | wall s | ESS / acceptance |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for payload in payloads:
        for pattern, row in payload["patterns"].items():
            lines.append(
                f"| {pattern} | {row['missing_fraction']:.2f} | zero-filled (no imputation) "
                f"| | | {row['class_error_zero_filled']:.3f} | | |")
            for method, m in row["methods"].items():
                extra = ""
                if "median_effective_sample_size" in m:
                    extra = f"ESS {m['median_effective_sample_size']:.1f}"
                if "acceptance_rate" in m:
                    extra = f"acc. {m['acceptance_rate']:.3f}"
                lines.append(
                    f"| {pattern} | | {method} | {m['missing_log_likelihood']:.1f} ± "
                    f"{m['missing_log_likelihood_stderr']:.1f} "
                    f"| {m['missing_log_likelihood_per_pixel']:.3f} | {m['class_error']:.3f} "
                    f"| {m['seconds']:.0f} | {extra} |")
    return "\n".join(lines)


def anomaly_table(payload: dict) -> str:
    lines = ["| model trained on | mean -log p(x), own test | mean -log p(x), other test "
             "| AUC (other = positive) | wall s |", "|---|---:|---:|---:|---:|"]
    for trained_on, row in payload["models"].items():
        (other, auc), = row["auc"].items()
        lines.append(f"| {trained_on} | {row['mean_nll'][trained_on]:.1f} "
                     f"| {row['mean_nll'][other]:.1f} ({other}) | {auc:.3f} "
                     f"| {row['seconds']:.0f} |")
    return "\n".join(lines)


def denoise_table(payload: dict) -> str:
    lines = ["| flip prob. e | noisy error | 3x3 median error | posterior mean error "
             "| posterior mean Brier | mean log p(y) (nats/image) | median ESS | wall s |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def error(m: dict) -> str:
        return f"{m['error']:.4f} ± {m['error_stderr']:.4f}"

    for e, row in payload["flip_probs"].items():
        post = row["posterior_mean"]
        lines.append(f"| {e} | {error(row['noisy'])} | {error(row['median_filter'])} "
                     f"| {error(post)} | {post['brier']:.4f} "
                     f"| {row['mean_log_evidence']:.1f} ± {row['log_evidence_stderr']:.1f} "
                     f"| {row['median_effective_sample_size']:.1f} | {row['seconds']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    impute = [read_json(f) for f in args.files if f.name == "impute.json"]
    if impute:
        print(impute_table(impute) + "\n")
    for f in args.files:
        if f.name == "anomaly.json":
            print(anomaly_table(read_json(f)) + "\n")
        if f.name == "denoise.json":
            print(denoise_table(read_json(f)) + "\n")
    return 0


if __name__ == "__main__":
    run_script(main)
