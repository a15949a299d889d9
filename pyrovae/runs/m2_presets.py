"""Named training recipes for [`M2`][pyrovae.models.m2.M2]: the papers' settings, each stated.
Every M2 of a run, on the command line or in an experiment, is built through one of them
(``pyrovae.runs.m2``: the run's options replace the preset's settings they name).

A preset is a [`M2Preset`][]: the model's keyword arguments, the input (grey levels or
binarised pixels), how the classifier weight ``alpha`` follows from the data sizes, the optimiser
(Adam's learning rate and betas), the batches and the epochs. [`m2_preset`][] returns one by
name, [`M2Preset.build`][] makes the model for a data set, [`M2Preset.batch_sizes`][] the
(unlabelled, labelled) batch sizes; ``pyrovae m2 train --preset NAME`` and
``python -m experiments.m2.mnist --preset NAME`` run one (every setting can still be overridden
on the command line).

``"pyrovae"`` — the default of both front ends: 50-D z, one hidden layer of 500 softplus units,
MLP classifier, dynamically binarised pixels, ``alpha = 0.1 * N``, Adam at 1e-3, batches of 100
unlabelled and 100 labelled images, 10 epochs (``pyrovae m2 train``'s defaults).

``"conv_relu"`` — ``experiments.m2.mnist``'s default before the presets (the early pilots of
``results/m2``): the same with a conv classifier, ReLU units and 300 epochs.

``"kingma2014"`` — Kingma, Rezende, Mohamed & Welling (2014) and their released code
(github.com/dpkingma/nips14-ssl, ``learn_yz_x_ss.py`` and ``run_2layer_ssl.py``):

* 50-D z, one hidden layer of 500 softplus units in q(z|x,y), p(x|y,z) and the MLP q(y|x);
* grey-level pixels in [0, 1] scored by the Bernoulli likelihood (``allow_continuous=True``);
* the supervised bound with weight 1, ``alpha = 0.1 * N`` (the code's ``alpha * n_tot /
  n_labeled`` multiplies the labelled log q(y|x) sum: eq. (9) with alpha = 0.1 N);
* Adam, learning rate 3e-4, beta1 = 0.9, beta2 = 0.999 (``AdaM(..., alpha=3e-4, beta1=0.9,
  beta2=0.999)``; the paper's "first and second moment decay 0.1 and 0.001" is the same in the
  Adam preprint's old notation);
* every parameter drawn from N(0, s^2) with s = 1e-3 (the code's ``init_w(1e-3)`` calls
  ``np.random.normal(0, 1e-3)``: 1e-3 is a standard deviation);
* the KL of z in closed form (the code's ``type_qz = type_pz = 'gaussianmarg'`` computes
  ``log p(z) - log q(z)`` from q's mean and variance, not from the sampled z):
  ``analytic_kl=True``;
* batches: both sets cut into the same number of minibatches per epoch (200; 100 at 100
  labels), one labelled and one unlabelled minibatch per step: at 3000 labels 235 unlabelled and
  15 labelled images per step; 3000 epochs (``n_passes=3000``).

  Not reproduced: the code adds a N(0, 1) prior on the weights (a MAP term, added once per
  step), starts the log-variance weights and output biases at exactly 0, and at 100 labels its
  M1+M2 uses 300 hidden units (this preset keeps 500; pass ``--hidden-sizes 300``). The code
  released is for M1+M2; for M2 on pixels the same settings are assumed.

``"pyro_ssvae"`` — Pyro's SS-VAE example (``examples/vae/ss_vae_M2.py``, the tutorial's run
``-zd 50 -hl 500 -lr 0.00042 -b1 0.95 -bs 200 -alm 46 -enum parallel``):

* 50-D z, one hidden layer of 500 softplus units, MLP classifier, PyTorch's initialisation;
  the KL of z sampled (``TraceEnum_ELBO``);
* grey-level pixels (``x / 255``) with a Bernoulli likelihood;
* the auxiliary loss ``46 * sum_batch log q(y|x)`` on labelled batches beside the ELBO, i.e.
  eq. (9) with ``alpha = 46 * N_l`` (46 per labelled image); supervised bound weight 1;
* Adam, learning rate 4.2e-4, betas (0.95, 0.999); batches of 200 images;
* the example alternates labelled and unlabelled steps (one labelled batch every
  ``N / N_l`` steps); pyrovae takes one step per (unlabelled, labelled) pair of batches, so
  here an epoch has N_u / 200 steps and the labelled set is cycled. 50 epochs (the tutorial).

``"cpu_fast"`` — the CPU recipe (issue 26): ``pyro_ssvae``'s networks, input, weighting
(``alpha = 46`` per labelled image), Adam betas and batches of 200, and

* Pyro's example's alternating steps (``step_scheme="alternating"``: one unlabelled or one
  labelled batch per step, each set once per epoch; the joint step stayed flat for ~18 epochs
  on the CPU, ``results/m2/cpu_recipe``);
* Adam at 4.2e-3, ten times the example's (Pyro's pull request 1089 ran its example at 4.2e-3),
  decaying by ``lr_decay=0.97`` per epoch, 100 epochs (a constant 4.2e-3 reached 4.47 %
  validation error at epoch 18, then jumped to 17 % for an epoch: the decay calms it);

with cheaper steps whose expectation is unchanged:

* ``objective="sum_and_sample"``: the top 3 classes of q(y|x) summed exactly, one more drawn
  from the rest and reweighted by its mass ([`pyrovae.infer.sum_and_sample`][]), instead of all
  10; unbiased for the enumerated ELBO;
* ``precision="bf16"``: the networks under bfloat16 autocast, Pyro's densities and the
  optimiser in float32 ([`pyrovae.infer.precision`][]);
* ``threads=2``: both cores of the development machine.

  Measured on the 2-core CPU, one thread, 3000 labels: an epoch takes 0.38x the time of
  plain-PyTorch float32 exact enumeration (``results/benchmarks/cpu_m2``) with the joint
  step. The exact presets stay for faithful reproduction on a GPU.

References:
    D. P. Kingma, D. J. Rezende, S. Mohamed, M. Welling. Semi-supervised learning with deep
    generative models. NeurIPS 2014.
    R. Liu, J. Regier, N. Tripuraneni, M. I. Jordan, J. McAuliffe. Rao-Blackwellized
    stochastic gradients for discrete distributions. ICML 2019.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from pyrovae.models.m2 import M2
from pyrovae.runs.launch import RunError

#: The model of the ``"pyrovae"`` preset, which every field of `M2Preset` defaults to.
_PYROVAE_MODEL = dict(latent_dim=50, hidden_sizes=(500,), arch="mlp", classifier_arch="mlp",
                      activation="softplus", labelled_weight=1.0, likelihood="bernoulli",
                      allow_continuous=False, init_scale=None, analytic_kl=False)


@dataclass(frozen=True)
class M2Preset:
    """One named recipe (see the module docstring for where each number comes from); every
    setting defaults to the ``"pyrovae"`` preset's.

    Attributes:
        name: the preset's name.
        reference: where its settings come from.
        model: keyword arguments of [`M2`][] (besides the data-dependent ``data_dim``,
            ``num_classes``, ``alpha``, ``num_train``).
        input: ``"grey"`` (grey levels in [0, 1] scored by the Bernoulli likelihood) or
            ``"dynamic"``/``"static"`` binarisation.
        alpha_factor: ``alpha = alpha_factor * N`` (N = labelled + unlabelled training images),
            or None.
        alpha_per_labelled: ``alpha = alpha_per_labelled * N_l``, or None (exactly one is set).
        lr: Adam's learning rate.
        betas: Adam's ``(beta1, beta2)``.
        batch_size: images per unlabelled batch (when ``batches_per_epoch`` is None).
        labelled_batch_size: images per labelled batch (when ``batches_per_epoch`` is None).
        batches_per_epoch: cut both sets into this many minibatches (Kingma's scheme), or None;
            ``batches_per_epoch_by_labels`` overrides it for given numbers of labels.
        epochs: epochs of the recipe.
        objective: ``fit``'s objective for the recipe (default ``"enum"``, exact enumeration).
        precision: ``fit``'s precision (default ``"fp32"``).
        threads: torch threads the recipe is meant for (default None: the machine's).
        step_scheme: ``fit``'s step scheme: ``"joint"`` (default; one unlabelled and one
            labelled batch per step) or ``"alternating"`` (one set's batch per step).
        lr_decay: the learning rate's factor per epoch (default 1: constant).
    """

    name: str
    reference: str
    model: dict[str, Any] = field(default_factory=lambda: dict(_PYROVAE_MODEL))
    input: str = "dynamic"
    alpha_factor: float | None = 0.1
    alpha_per_labelled: float | None = None
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    batch_size: int = 100
    labelled_batch_size: int = 100
    epochs: int = 10
    batches_per_epoch: int | None = None
    batches_per_epoch_by_labels: dict[int, int] = field(default_factory=dict)
    objective: str = "enum"
    precision: str = "fp32"
    threads: int | None = None
    step_scheme: str = "joint"
    lr_decay: float = 1.0

    def alpha(self, num_train: int, num_labelled: int) -> float:
        """The classifier weight for N = ``num_train`` images, ``num_labelled`` of them labelled."""
        if self.alpha_factor is not None:
            return self.alpha_factor * num_train
        return self.alpha_per_labelled * num_labelled

    def batch_sizes(self, num_unlabelled: int, num_labelled: int) -> tuple[int, int]:
        """``(unlabelled, labelled)`` images per step."""
        n = self.batches_per_epoch_by_labels.get(num_labelled, self.batches_per_epoch)
        if n is None:
            return self.batch_size, self.labelled_batch_size
        return math.ceil(num_unlabelled / n), math.ceil(num_labelled / n)

    def build(self, num_train: int, num_labelled: int, data_dim: int = 784,
              num_classes: int = 10, **overrides: Any) -> M2:
        """The [`M2`][] of this recipe for a data set (``overrides`` replace model options)."""
        kwargs = dict(self.model, **overrides)
        return M2(data_dim=data_dim, num_classes=num_classes,
                  alpha=self.alpha(num_train, num_labelled), num_train=num_train, **kwargs)

    def fit_options(self) -> dict[str, Any]:
        """``fit``'s keyword arguments that the recipe sets besides the optimiser and batches."""
        return dict(objective=self.objective, precision=self.precision,
                    step_scheme=self.step_scheme)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def replace(self, model: dict[str, Any] | None = None, **fields: Any) -> M2Preset:
        """This recipe with ``fields`` and the model options ``model`` replaced."""
        return replace(self, model={**self.model, **(model or {})}, **fields)


_PRESETS = {
    "pyrovae": M2Preset(name="pyrovae", reference="pyrovae m2 train's defaults"),
    "kingma2014": M2Preset(
        name="kingma2014",
        reference="Kingma et al. 2014 and github.com/dpkingma/nips14-ssl (learn_yz_x_ss.py)",
        model=dict(_PYROVAE_MODEL, allow_continuous=True, init_scale=1e-3, analytic_kl=True),
        input="grey",
        lr=3e-4,
        batches_per_epoch=200,
        batches_per_epoch_by_labels={100: 100},
        epochs=3000,
    ),
    "pyro_ssvae": M2Preset(
        name="pyro_ssvae",
        reference="Pyro examples/vae/ss_vae_M2.py (SS-VAE tutorial's example run)",
        model=dict(_PYROVAE_MODEL, allow_continuous=True),
        input="grey",
        alpha_factor=None,
        alpha_per_labelled=46.0,
        lr=4.2e-4,
        betas=(0.95, 0.999),
        batch_size=200,
        labelled_batch_size=200,
        epochs=50,
    ),
}

_PRESETS["cpu_fast"] = _PRESETS["pyro_ssvae"].replace(
    name="cpu_fast", epochs=100, objective="sum_and_sample", precision="bf16", threads=2,
    step_scheme="alternating", lr=4.2e-3, lr_decay=0.97,
    reference="pyro_ssvae's networks and weighting, Pyro's alternating steps at 10x its "
    "learning rate decaying 3 % per epoch, with cheaper exact-in-expectation steps (issue 26): "
    "bf16 autocast and sum-and-sample (top 3 summed, one sampled)",
)
_PRESETS["conv_relu"] = _PRESETS["pyrovae"].replace(
    name="conv_relu", model=dict(classifier_arch="conv", activation="relu"), epochs=300,
    reference="experiments.m2.mnist's default before presets (results/m2's early pilots)",
)
PRESETS = tuple(_PRESETS)


def m2_preset(name: str) -> M2Preset:
    """The preset called ``name`` (one of `PRESETS`)."""
    if name not in _PRESETS:
        raise RunError(f"unknown M2 preset {name!r}; choose one of {PRESETS}")
    return _PRESETS[name]
