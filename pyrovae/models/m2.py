"""The semi-supervised M2 model (Kingma, Rezende, Mohamed & Welling, 2014) as one model/guide pair.

Generative story, for every image ``n`` (labelled or not)::

    y_n ~ Cat(pi)                      pi = uniform over the C classes
    z_n ~ N(0, I_K)
    x_n | y_n, z_n ~ Bernoulli(sigmoid(f_theta(z_n, y_n)))      (D pixels, independent)

or, with ``likelihood="gaussian_learned"`` (continuous data such as M1's latent codes, the
"M1+M2" stack)::

    x_n | y_n, z_n ~ N(m_theta(z_n, y_n), diag exp(v_theta(z_n, y_n)))

Colour images (``image_shape=(C, H, W)``, flattened channel-major, ``D = C*H*W``) are the same
story with every channel's grey level in [0, 1] as one of the D values: Bernoulli with
``allow_continuous=True`` (binarising colour would destroy it) or Gaussian, independent given
``(y_n, z_n)``.

Guide (amortised)::

    q(y_n | x_n) = Cat(softmax(g_phi(x_n)))                             (the classifier)
    q(z_n | x_n, y_n) = N(mu_phi(x_n, y_n), diag sigma_phi(x_n, y_n)^2)

One ``model(x, y=None, subsample=None)`` and one ``guide(x, y=None, subsample=None)`` serve both
kinds of data:

* ``y`` given (labelled data): the model observes ``y``, the guide draws only ``z``, and the
  ELBO is the supervised bound
  ``L(x, y) = E_q(z|x,y)[log p(x|y,z) + log p(y) + log p(z) - log q(z|x,y)]``.
* ``y=None`` (unlabelled data): the guide's ``y`` site is marked for parallel enumeration
  (``config_enumerate``), so ``TraceEnum_ELBO`` sums over all C classes exactly instead of
  sampling one: ``U(x) = sum_y q(y|x) [L(x, y) - log q(y|x)]``. Train with
  ``fit(..., objective="enum")`` (``TraceEnum_ELBO(max_plate_nesting=1)``), or on a CPU with
  ``objective="sum_and_sample"`` (the top 3 classes of q(y|x) summed, one more sampled:
  unbiased for the same sum at 4 of the C passes; [`pyrovae.infer.sum_and_sample`][]).

The classifier term lives in the same objective: on labelled data the guide adds
``pyro.factor("classifier", -(alpha / N_l) * log q(y_n | x_n))`` inside the data plate (a guide
factor is *subtracted* by the ELBO, hence the minus sign; ``has_rsample=True`` because it is a
deterministic, differentiable function of the parameters, so no score-function term is added).
The data plate scales it by ``N_l / M`` for a minibatch of M of the N_l labelled images, so the
minibatch estimate of the classifier term is ``alpha * mean_batch log q(y|x)``, and the full
objective maximised by ``fit`` with data ``{"unlabelled": (x_u,), "labelled": (x_l, y_l)}`` is
exactly Kingma et al.'s eq. (9)::

    J = sum_{n in U} U(x_n) + sum_{n in L} L(x_n, y_n) + alpha * (1/N_l) sum_{n in L} log q(y_n|x_n)

with one optimiser step per pair of batches. Kingma et al. use ``alpha = 0.1 * N`` (N = all
training images), the default here when ``num_train=N`` is given; e.g. N = 50000 and N_l = 100
weigh each labelled image's ``log q(y|x)`` by 50.

Optionally ``labelled_weight = w`` multiplies the supervised bound (not the classifier term):
``J_w = sum_U U + w * sum_L L(x, y) + alpha * mean_L log q(y|x)``. ``w = 1`` (default) is
Kingma et al.'s J; ``w = N_u / N_l`` weighs a labelled batch like an unlabelled one, as
implementations that average each batch do (it pushes the decoder to use y when labels are few).

Closed-form KL of z (``analytic_kl=True``): Pyro's ``TraceMeanField_ELBO`` replaces
``log p(z) - log q(z)`` by ``-KL(q || p)`` but refuses enumerated sites, and ``TraceEnum_ELBO``
never does. Enumeration does not stand in the way: q(z|x,y) is a diagonal Gaussian for each
enumerated y and p(z) = N(0, I) does not depend on y, so
``U(x) = sum_y q(y|x) [E_q(z|x,y) log p(x|y,z) + log p(y) - KL(q(z|x,y) || p(z)) - log q(y|x)]``
with the y-sum exact (its own KL, ``sum_y q(y|x) log(q(y|x)/p(y))``, is already exact), the KL
of z exact for every y, and only the reconstruction term sampled; likewise ``L(x, y)``. M2 does
it inside ``TraceEnum_ELBO``: the log-densities of both z sites are masked out
(``poutine.mask(False)``; ``z`` is still drawn and reparameterised, and feeds the decoder), and
the guide adds ``pyro.factor("kl_z", KL, has_rsample=True)``: a guide factor is subtracted, and
the ELBO weighs it by q(y|x) like every guide term below the enumerated y. Same expectation
as the sampled estimate (``tests/test_m2_presets.py`` checks both the exact value at shared
noise and the expectation), lower variance.

Notes:
    * With the Bernoulli likelihood ``x`` must be binary (0/1): binarise images first
      (``pyrovae.data.binarize`` or ``DynamicBinarized``), or pass ``allow_continuous=True``.
      Data checks follow the rule of [`pyrovae.models.base`][] (shapes always; values, label
      range and every class present in the labelled set once per data tensor, while Pyro
      validation is on).
    * ``fit(..., objective="enum", jit=True)`` works: ``JitTraceEnum_ELBO`` compiles one graph
      per call signature, ``(x, idx)`` and ``(x, y, idx)``; value checks are skipped while
      tracing. Both signatures read the parameters in the same order, which Pyro's
      ``CompiledFunction`` silently relies on (it keeps a single list of parameter names).
    * On labelled batches ``TraceEnum_ELBO`` warns that no site is enumerated; it is harmless,
      and ``pyrovae.infer.make_objective("enum")`` silences it.

References:
    D. P. Kingma, D. J. Rezende, S. Mohamed, M. Welling. Semi-supervised learning with deep
    generative models. NeurIPS 2014.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
import torch.nn.functional as F
from pyro.infer import config_enumerate
from torch import nn

from .base import (
    ConfigurableModule,
    DataError,
    check_data,
    check_hidden_sizes,
    check_once,
    check_positive_int,
    data_plate,
    draw_data,
    standard_normal,
    take,
)
from .likelihoods import make_likelihood
from .networks import (
    ARCHITECTURES,
    Classifier,
    LabelledGaussianEncoder,
    as_pyro,
    build_decoder,
    check_image_shape,
)

M2_LIKELIHOODS = ("bernoulli", "gaussian", "gaussian_learned")


def check_label_shape(y: torch.Tensor, num_rows: int, what: str = "y") -> None:
    """Raise a ``ValueError`` unless ``y`` is a 1-D integer tensor of ``num_rows`` labels.

    Shapes and dtype only: no host sync.
    """
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.is_floating_point():
        desc = f"{y.dtype} of shape {list(y.shape)}" if isinstance(y, torch.Tensor) else type(y)
        raise ValueError(f"{what} must be a 1-D integer tensor of class labels, got {desc}")
    if y.shape[0] != num_rows:
        raise ValueError(f"x has {num_rows} rows but {what} has {y.shape[0]} labels")


def check_labels(y: torch.Tensor, num_classes: int, what: str = "y") -> None:
    """Raise a ``ValueError`` unless ``y`` is a 1-D integer tensor of labels in ``0..C-1``."""
    check_label_shape(y, y.shape[0] if isinstance(y, torch.Tensor) and y.dim() else -1, what)
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise DataError(
            f"{what} has labels in {int(y.min())}..{int(y.max())}; they must lie in "
            f"0..{num_classes - 1} (num_classes={num_classes})"
        )


def warn_missing_classes(y: torch.Tensor, num_classes: int, what: str = "y") -> None:
    """Warn (``UserWarning``) naming the classes of ``0..C-1`` that have no label in ``y``."""
    present = torch.zeros(num_classes, dtype=torch.bool, device=y.device)
    present[y] = True
    missing = (~present).nonzero().flatten().tolist()
    if missing:
        warnings.warn(
            f"the labelled data {what} has no example of class(es) {missing} of "
            f"0..{num_classes - 1}: q(y|x) gets no supervision for them "
            "(see pyrovae.data.labelled_split)",
            stacklevel=2,
        )


def normal_init_(module: nn.Module, std: float) -> nn.Module:
    """Redraw every parameter of ``module`` from ``N(0, std^2)`` in place (torch's global RNG).

    ``std`` is a standard deviation. Returns ``module``.
    """
    if not float(std) > 0:
        raise ValueError(f"std must be > 0, got {std}")
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(0.0, float(std))
    return module


class M2(ConfigurableModule):
    """Semi-supervised M2 (see the module docstring for the story).

    Args:
        data_dim: D, values per image (default 784): pixels times colour channels, the
            product of ``image_shape`` when that is given.
        num_classes: C (default 10).
        latent_dim: K, the style latent's dimension (default 50, as Kingma et al.). With 100
            labels and a short budget a 2-D z learned to classify far better than 50-D (a
            small z cannot hold the digit identity, so the model puts it in y; results/m2).
        hidden_sizes: hidden widths of the encoder ``q(z|x,y)`` and the classifier ``q(y|x)``,
            from the data side (default ``(500,)``); a conv body uses ``hidden_sizes[-1]``.
        decoder_hidden_sizes: the decoder's hidden widths from the latent side (default:
            reversed ``hidden_sizes``).
        arch: ``"mlp"`` (default) or ``"conv"`` (images of ``image_shape``): the networks of
            ``q(z|x,y)`` and ``p(x|y,z)``, as the VAE's ``arch``.
        classifier_arch: ``"mlp"`` or ``"conv"``, the network of ``q(y|x)`` (default: ``arch``).
            E.g. ``arch="mlp", classifier_arch="conv"``: a conv classifier beside an MLP VAE.
        activation: nonlinearity name from [`pyrovae.models.networks`][] (default ``"softplus"``,
            as Kingma et al.).
        alpha: weight of the classifier term, ``alpha * mean_{labelled} log q(y|x)`` (Kingma et
            al.'s alpha). Default ``None``: ``0.1 * num_train``.
        num_train: N, the number of training images (labelled + unlabelled), used only for the
            default ``alpha``; one of ``alpha`` or ``num_train`` is required.
        labelled_weight: w > 0, the weight of the supervised bound L(x, y) (default 1.0).
        likelihood: ``"bernoulli"`` (default, binary images), ``"gaussian_learned"`` (a
            diagonal Gaussian with mean and log-variance heads, identity mean, for real-valued
            features such as M1's codes; its standard deviations are bounded below by 1e-3) or
            ``"gaussian"`` (identity mean, fixed standard deviation ``sigma``).
        sigma: the fixed standard deviation of ``likelihood="gaussian"`` (default 1.0).
        allow_continuous: let ``"bernoulli"`` score values in [0, 1] that are not 0/1
            (default False: non-binary data raises a ``ValueError``).
        encoder: your own ``q(z|x,y)`` network (default None: built from ``arch``): a module
            ``(x [B, D], y) -> (loc, scale)``, ``y`` integer labels broadcasting against ``[B]``
            (``[B]``, or ``[C, 1]`` when enumerated, giving ``[C, B, K]`` outputs).
        decoder: your own ``p(x|y,z)`` network: ``[..., K + C] -> [..., H * D]`` raw outputs
            from ``z`` concatenated with the one-hot label (``H = 2`` heads for
            ``"gaussian_learned"``, else 1).
        classifier: your own ``q(y|x)`` network: ``x [..., D] -> logits [..., C]``.
            Modules you give are converted to ``PyroModule`` in place; ``config`` keeps a
            copy of each as given, so a checkpoint can rebuild the model (the module's class
            must be importable to load it).
        init_scale: if given, a standard deviation s: after construction every parameter
            (weights and biases of the classifier, encoder and decoder) is redrawn from
            ``N(0, s^2)`` ([`normal_init_`][]). Default None: PyTorch's layer initialisation.
            Kingma et al.'s released code draws its weights with ``init_w(1e-3)``, i.e.
            ``np.random.normal(0, 1e-3)``: a standard deviation of 1e-3 (variance 1e-6), which
            the paper writes ``N(0, 0.001)``; ``init_scale=1e-3`` reproduces it
            ([`pyrovae.runs.m2_presets`][]).
        analytic_kl: compute ``KL(q(z|x,y) || p(z))`` in closed form instead of from the sampled
            ``z`` (default False). See "Closed-form KL of z" in the module docstring.
        image_shape: ``(C, H, W)`` of the flattened images, e.g. ``(3, 32, 32)`` for SVHN
            (default None: ``(1, 28, 28)`` for conv networks); ``data_dim`` must be its
            product. See [`conv_layout`][pyrovae.models.networks.conv_layout].

    Methods: [`encode`][] ``(x, y) -> (loc, scale)`` of ``q(z|x,y)``; [`decode`][]
    ``(z, y) -> E[x | y, z]``; [`sample`][] ``y -> x`` with ``z`` from the prior;
    [`class_logits`][], [`classify`][], [`class_elbos`][], [`check_data`][].

    Configs saved before the networks' arguments were renamed (``hidden_dims``,
    ``encoder_arch``/``decoder_arch``) are read by [`upgrade_config`][].

    Attributes:
        alpha: the classifier weight in use (a float).
    """

    def __init__(
        self,
        data_dim: int = 784,
        num_classes: int = 10,
        latent_dim: int = 50,
        hidden_sizes: Sequence[int] = (500,),
        decoder_hidden_sizes: Sequence[int] | None = None,
        arch: str = "mlp",
        classifier_arch: str | None = None,
        activation: str = "softplus",
        alpha: float | None = None,
        num_train: int | None = None,
        labelled_weight: float = 1.0,
        likelihood: str = "bernoulli",
        sigma: float = 1.0,
        allow_continuous: bool = False,
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
        classifier: nn.Module | None = None,
        init_scale: float | None = None,
        analytic_kl: bool = False,
        image_shape: Sequence[int] | None = None,
    ) -> None:
        check_positive_int(data_dim, "data_dim")
        check_positive_int(num_classes, "num_classes")
        check_positive_int(latent_dim, "latent_dim")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        hidden_sizes = check_hidden_sizes(hidden_sizes)
        if decoder_hidden_sizes is None:
            decoder_hidden_sizes = hidden_sizes[::-1]
        decoder_hidden_sizes = check_hidden_sizes(decoder_hidden_sizes, "decoder_hidden_sizes")
        if classifier_arch is None:
            classifier_arch = arch
        for name, value in [("arch", arch), ("classifier_arch", classifier_arch)]:
            if value not in ARCHITECTURES:
                raise ValueError(f"{name} must be one of {ARCHITECTURES}, got {value!r}")
            if value == "conv" and image_shape is None and data_dim != 784:
                raise ValueError(
                    f"{name}='conv' needs 28x28 images (data_dim=784) unless image_shape="
                    f"(C, H, W) is given, got data_dim={data_dim}"
                )
            if image_shape is not None:
                image_shape = check_image_shape(value, data_dim, image_shape)
        if alpha is None:
            if num_train is None:
                raise ValueError(
                    "give alpha (the classifier weight) or num_train (then "
                    "alpha = 0.1 * num_train, Kingma et al.'s choice)"
                )
            check_positive_int(num_train, "num_train")
            alpha = 0.1 * num_train
        if not float(alpha) >= 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        if not float(labelled_weight) > 0:
            raise ValueError(f"labelled_weight must be > 0, got {labelled_weight}")
        if likelihood not in M2_LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {M2_LIKELIHOODS}, got {likelihood!r}")
        if init_scale is not None and not float(init_scale) > 0:
            raise ValueError(f"init_scale must be > 0 (a standard deviation), got {init_scale}")
        super().__init__(
            data_dim=data_dim, num_classes=num_classes, latent_dim=latent_dim,
            hidden_sizes=hidden_sizes, decoder_hidden_sizes=decoder_hidden_sizes, arch=arch,
            classifier_arch=classifier_arch, activation=activation, alpha=float(alpha),
            num_train=num_train, labelled_weight=float(labelled_weight), likelihood=likelihood,
            sigma=float(sigma), allow_continuous=bool(allow_continuous),
            # Copies as given, unconverted, so that a checkpoint can rebuild the model.
            encoder=copy.deepcopy(encoder), decoder=copy.deepcopy(decoder),
            classifier=copy.deepcopy(classifier),
            init_scale=None if init_scale is None else float(init_scale),
            analytic_kl=bool(analytic_kl),
            image_shape=None if image_shape is None else list(image_shape),
        )
        self.data_dim, self.num_classes, self.latent_dim = data_dim, num_classes, latent_dim
        self.alpha, self.labelled_weight = float(alpha), float(labelled_weight)
        self.analytic_kl = bool(analytic_kl)
        self.image_shape = image_shape
        # Built in this order (classifier, encoder, decoder): seeded weights depend on it.
        if classifier is None:
            classifier = Classifier(
                classifier_arch, data_dim, num_classes, hidden_sizes, activation, image_shape
            )
        self.classifier = as_pyro(classifier)
        if encoder is None:
            encoder = LabelledGaussianEncoder(
                arch, data_dim, num_classes, latent_dim, hidden_sizes, activation,
                image_shape=image_shape,
            )
        self.encoder = as_pyro(encoder)
        self.likelihood = make_likelihood(
            likelihood, sigma=sigma, min_scale=1e-3, mean_activation="identity",
            allow_continuous=allow_continuous,
        )
        if decoder is None:
            decoder = build_decoder(
                arch, latent_dim + num_classes, data_dim, decoder_hidden_sizes, activation,
                num_heads=self.likelihood.num_heads, image_shape=image_shape,
            )
        self.decoder = as_pyro(decoder)
        if init_scale is not None:
            normal_init_(self, float(init_scale))

    @classmethod
    def upgrade_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        """Today's keyword arguments from a config saved by an older pyrovae.

        ``hidden_dims`` became ``hidden_sizes``; ``encoder_arch`` and ``decoder_arch`` (always
        equal in saved runs) became ``arch``. A config naming two different ones cannot be
        expressed with built networks and raises a ``ValueError``.
        """
        config = dict(config)
        if "hidden_dims" in config:
            config["hidden_sizes"] = config.pop("hidden_dims")
        encoder_arch = config.pop("encoder_arch", None)
        decoder_arch = config.pop("decoder_arch", None)
        if encoder_arch is not None or decoder_arch is not None:
            if encoder_arch != decoder_arch:
                raise ValueError(
                    f"an old M2 config with encoder_arch={encoder_arch!r} and decoder_arch="
                    f"{decoder_arch!r}: today's M2 builds both from one `arch`; pass your own "
                    "encoder/decoder modules to mix them"
                )
            config["arch"] = encoder_arch
        return config

    # ----------------------------------------------------------------- networks
    def _one_hot(self, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.one_hot(y, self.num_classes).to(like.dtype)

    def decoder_logits(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The decoder's output for ``p(x | y, z)`` (Bernoulli logits, or Gaussian mean and
        log-variance heads): ``z`` [..., K] and ``y`` [...] (broadcastable) -> [..., heads * D]."""
        y_hot = self._one_hot(y, z)
        shape = torch.broadcast_shapes(z.shape[:-1], y_hot.shape[:-1])
        joint = torch.cat(
            [z.expand(*shape, self.latent_dim), y_hot.expand(*shape, self.num_classes)], -1
        )
        return self.decoder(joint)

    # ----------------------------------------------------------------- data checks
    def _check_inputs(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        """The data-check rule of [`pyrovae.models.base`][]: shapes now, values once."""
        check_data(x, self.data_dim)
        check_once(x, self.likelihood.check_key, self.likelihood.check)
        if y is not None:
            check_label_shape(y, x.shape[0])
            check_once(y, f"labels<{self.num_classes}", self._check_label_values)

    def _check_label_values(self, y: torch.Tensor) -> None:
        check_labels(y, self.num_classes)
        warn_missing_classes(y, self.num_classes)

    def check_data(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """Check shapes, the likelihood's support and the labels of all the data now."""
        check_data(x, self.data_dim)
        self.likelihood.check(x)
        if y is not None:
            check_label_shape(y, x.shape[0])
            self._check_label_values(y)

    # ----------------------------------------------------------------- model / guide
    def model(
        self, x: torch.Tensor, y: torch.Tensor | None = None, subsample: torch.Tensor | None = None
    ) -> None:
        """``p(x, y, z)``. ``x`` [N, D] binary; ``y`` [N] labels or None; ``subsample`` [M] rows."""
        self._check_inputs(x, y)
        self._model(x, y, subsample)

    def _model(self, x, y, subsample) -> None:
        prior_logits = x.new_zeros(self.num_classes)
        with data_plate(x, subsample), self._supervised_scale(y):
            xb, yb = take(x, subsample), take(y, subsample)
            y_site = pyro.sample("y", dist.Categorical(logits=prior_logits), obs=yb)
            z_loc = xb.new_zeros(xb.shape[0], self.latent_dim)
            with self._kl_mask():
                z = pyro.sample("z", dist.Normal(z_loc, 1.0).to_event(1))
            out = self.decoder_logits(z, y_site)
            pyro.sample("x", self.likelihood.distribution(out), obs=xb)

    def guide(
        self, x: torch.Tensor, y: torch.Tensor | None = None, subsample: torch.Tensor | None = None
    ) -> None:
        """``q(y | x) q(z | x, y)``; ``y`` enumerated in parallel when None (see module doc)."""
        self._check_inputs(x, y)
        config_enumerate(self._guide, default="parallel")(x, y, subsample)

    def _guide(self, x, y, subsample) -> None:
        with data_plate(x, subsample):
            xb = take(x, subsample)
            logits = self.classifier(xb)
            if y is None:
                y_site = pyro.sample("y", dist.Categorical(logits=logits))
            else:
                y_site = take(y, subsample)
                log_q = dist.Categorical(logits=logits).log_prob(y_site)
                # Minus: the ELBO subtracts guide factors. Scaled by N_l/M by the plate.
                pyro.factor("classifier", -(self.alpha / x.shape[0]) * log_q, has_rsample=True)
            loc, scale = self.encoder(xb, y_site)
            with self._supervised_scale(y):
                q_z = dist.Normal(loc, scale).to_event(1)
                with self._kl_mask():
                    pyro.sample("z", q_z)
                if self.analytic_kl:
                    # KL(q(z|x,y) || N(0, I)) per row (and per enumerated y); subtracted by the
                    # ELBO because it is a guide factor.
                    kl = 0.5 * (loc.pow(2) + scale.pow(2) - 1.0 - 2.0 * scale.log()).sum(-1)
                    pyro.factor("kl_z", kl, has_rsample=True)

    def _kl_mask(self):
        """Mask the z sites' log-densities out when the KL is added in closed form."""
        if not self.analytic_kl:
            return contextlib.nullcontext()
        return poutine.mask(mask=False)

    def _supervised_scale(self, y: torch.Tensor | None):
        """Scale the supervised bound's sites by ``labelled_weight`` (labelled data only)."""
        if y is None or self.labelled_weight == 1.0:
            return contextlib.nullcontext()
        return poutine.scale(scale=self.labelled_weight)

    # ----------------------------------------------------------------- prediction
    @torch.no_grad()
    def class_logits(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """Logits of ``q(y | x)`` [N, C] for images ``x`` [N, D], in chunks of ``batch_size``."""
        check_data(x, self.data_dim)
        chunks = [self.classifier(xb) for xb in x.split(batch_size)]
        return torch.cat(chunks) if chunks else x.new_zeros(0, self.num_classes)

    @torch.no_grad()
    def classify(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """``argmax_y q(y | x)``: a LongTensor [N] for images ``x`` [N, D]."""
        return self.class_logits(x, batch_size).argmax(-1)

    @torch.no_grad()
    def class_elbos(
        self, x: torch.Tensor, num_samples: int = 1, eps: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Monte Carlo estimates of the supervised bound ``L(x, y=k)`` for every class k: [N, C].

        ``argmax_k L(x, k)`` is the generative model's own classification of ``x`` (up to the
        bound's gap), which the unsupervised term pulls ``q(y|x)`` towards.

        Read from traces of the same model and guide that training uses: the guide is traced
        with the labels ``y = [[0], ..., [C-1]]`` (every class for every row, as enumeration
        lays them out) and its ``z`` site observed, which records ``q(z | x, y)`` without
        drawing; ``z = loc + scale * eps``;
        the model is traced with that ``z``; per row ``L = sum_model log p - log q(z | x, k)``
        (unscaled log-densities; the guide's classifier factor is not part of ``L``).

        Args:
            x: data [N, D].
            num_samples: reparameterised draws of ``z ~ q(z | x, k)`` averaged per class.
            eps: optional standard-normal noise [S, C, N, K] to use instead of fresh draws.
        """
        check_data(x, self.data_dim)
        n, c, k = x.shape[0], self.num_classes, self.latent_dim
        if eps is None:
            eps = torch.randn((num_samples, c, n, k), dtype=x.dtype, device=x.device)
        classes = torch.arange(c, device=x.device)[:, None]  # [C, 1]: every class, every row
        placeholder = {"z": x.new_zeros(c, n, k)}
        q = poutine.trace(poutine.condition(self._guide, data=placeholder)).get_trace(
            x, classes, None
        ).nodes["z"]["fn"]
        bounds = []
        for noise in eps:
            z = q.base_dist.loc + q.base_dist.scale * noise  # [C, N, K]
            model = poutine.condition(self._model, data={"z": z})
            sites = poutine.trace(model).get_trace(x, classes, None).nodes
            log_p = {name: sites[name]["fn"].log_prob(sites[name]["value"]) for name in "xyz"}
            bounds.append(log_p["x"] + log_p["y"] + log_p["z"] - q.log_prob(z))  # [C, N]
        return torch.stack(bounds).mean(0).T

    @torch.no_grad()
    def encode(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loc, scale)`` of ``q(z | x, y)``, each [N, K], for ``x`` [N, D] and labels [N]."""
        check_data(x, self.data_dim)
        check_labels(y, self.num_classes)
        return self.encoder(x, y)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The mean ``E[x | y, z]`` [N, D] of ``p(x | y, z)`` (pixel probabilities for Bernoulli).

        Args:
            z: styles [N, K].
            y: labels [N].
        """
        check_labels(y, self.num_classes)
        if z.dim() != 2 or z.shape != (y.shape[0], self.latent_dim):
            raise ValueError(
                f"z must have shape [{y.shape[0]}, {self.latent_dim}], got {list(z.shape)}"
            )
        return self.likelihood.mean(self.decoder_logits(z, y))

    @torch.no_grad()
    def sample(
        self, y: torch.Tensor, mean: bool = True, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Images of the given classes: ``z ~ N(0, I)``, then ``E[x | y, z]`` or a draw of ``x``.

        Args:
            y: labels [N].
            mean: return ``E[x | y, z]`` (default True) instead of a draw from ``p(x | y, z)``.
            generator: optional ``torch.Generator`` for ``z`` and ``x`` (default: the global
                RNG); drawn on its device and moved to the model's, as ``VAE.sample`` does.

        Returns ``[N, D]``.
        """
        check_labels(y, self.num_classes)
        weight = next(self.decoder.parameters())
        z = standard_normal((y.shape[0], self.latent_dim), weight, generator)
        out = self.decoder_logits(z, y)
        return self.likelihood.mean(out) if mean else draw_data(self.likelihood, out, generator)
