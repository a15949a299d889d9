"""What every pyrovae model shares: one vocabulary, one data-check rule, user networks, and
checkpoints saved under older argument names."""

import re

import pyro
import pytest
import torch
from conftest import REPO
from pyro.infer import Trace_ELBO
from torch import nn

import pyrovae
from pyrovae.data.smiles import SmilesVocabulary
from pyrovae.infer import param_scope
from pyrovae.infer.checkpoint import read_checkpoint
from pyrovae.models import (
    ICA,
    M2,
    NMF,
    PPCA,
    SMILESVAE,
    VAE,
    FactorAnalysis,
    SketchRNN,
    networks,
)
from pyrovae.models.char_rnn import CharRNN
from pyrovae.models.factor_analysis import log_marginal as fa_log_marginal
from pyrovae.models.ppca import log_marginal as ppca_log_marginal
from pyrovae.models.ppca import posterior as ppca_posterior

# Every committed checkpoint (a ``log_px.pt`` holds per-image log p(x), not a model).
COMMITTED = sorted(p for p in REPO.glob("results/**/*.pt") if p.name != "log_px.pt")


# ------------------------------------------------------------------ old checkpoints


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: str(p.relative_to(REPO)))
def test_every_committed_checkpoint_loads(path):
    payload = read_checkpoint(path)
    model = pyrovae.load_checkpoint(path)  # load_state_dict is strict: every weight has a home
    assert type(model).__name__ == payload["model_class"].rsplit(".", 1)[1]
    if isinstance(model, SketchRNN):  # a sequence model: its prior draws decode to strokes
        sketches, lengths = model.sample(2, temperature=0.1,
                                         generator=torch.Generator().manual_seed(0))
        assert sketches.shape[0] == 2 and sketches.shape[-1] == 5 and bool((lengths > 0).all())
        return
    x = torch.zeros(3, model.data_dim)
    loc, scale = model.encode(x) if isinstance(model, VAE) else model.encode(x, torch.arange(3))
    assert loc.shape == (3, model.latent_dim) and bool((scale > 0).all())
    if isinstance(model, M2):
        saved = payload["model_config"]
        if "hidden_dims" in saved:  # saved before the rename: upgrade_config maps the old names
            assert model.config["hidden_sizes"] == saved["hidden_dims"]
            assert model.config["arch"] == saved["encoder_arch"] == saved["decoder_arch"]
        else:
            assert model.config["hidden_sizes"] == saved["hidden_sizes"]
            assert model.config["arch"] == saved["arch"]
        assert model.config["classifier_arch"] == saved["classifier_arch"]


def test_m2_upgrade_config_maps_old_names():
    old = dict(alpha=1.0, hidden_dims=[7], classifier_arch="conv", encoder_arch="mlp",
               decoder_arch="mlp")
    assert M2.upgrade_config(old) == dict(alpha=1.0, hidden_sizes=[7], classifier_arch="conv",
                                          arch="mlp")
    assert M2.from_config(old).config["hidden_sizes"] == [7]
    with pytest.raises(ValueError, match="one `arch`"):
        M2.upgrade_config(dict(old, decoder_arch="conv"))
    assert NMF.upgrade_config(dict(hidden_dim=0)) == dict(hidden_sizes=[])
    assert NMF.upgrade_config(dict(hidden_dim=5)) == dict(hidden_sizes=[5])


# ------------------------------------------------------------------ data-check rule


def grey_in_last_row(n=40, d=16):
    x = torch.bernoulli(torch.full((n, d), 0.5))
    x[-1, 3] = 0.5
    return x


@pytest.mark.parametrize("name", ["vae", "m2"])
def test_non_binary_data_anywhere_is_a_one_line_error_naming_the_fix(name):
    x = grey_in_last_row()
    if name == "vae":
        model, objective = VAE(16, 2, hidden_sizes=[8]), "elbo"
    else:
        model, objective = M2(16, 3, 2, hidden_sizes=[8], alpha=1.0), "enum"
    loss = pyrovae.infer.make_objective(objective).differentiable_loss
    # The minibatch (rows 0..3) is binary: the whole tensor is checked, not the batch.
    with pytest.raises(ValueError) as info, param_scope(model):
        loss(model.model, model.guide, x, subsample=torch.arange(4))
    message = str(info.value)
    assert "\n" not in message
    assert "allow_continuous=True" in message and "binarise" in message


def test_value_checks_run_once_per_tensor_version(monkeypatch):
    vae = VAE(16, 2, hidden_sizes=[8])
    calls = []
    check = vae.likelihood.check
    monkeypatch.setattr(vae.likelihood, "check", lambda t: (calls.append(1), check(t)))
    x = torch.bernoulli(torch.full((10, 16), 0.5))
    with param_scope(vae):
        for _ in range(3):
            Trace_ELBO().loss(vae.model, vae.guide, x, subsample=torch.arange(4))
        assert len(calls) == 1  # model and guide, three steps: the tensor is checked once
        x[0, 0] = 1 - x[0, 0]  # in place: the version moves, so it is checked again
        Trace_ELBO().loss(vae.model, vae.guide, x)
        assert len(calls) == 2
        with pyro.validation_enabled(False):
            Trace_ELBO().loss(vae.model, vae.guide, x.clone())
        assert len(calls) == 2
    with pytest.raises(ValueError, match=r"shape \[N, 16\]"):  # shapes: always
        with pyro.validation_enabled(False), param_scope(vae):
            Trace_ELBO().loss(vae.model, vae.guide, torch.zeros(3, 15))


def test_m2_labelled_set_missing_a_class_warns_naming_it():
    m2 = M2(16, 4, 2, hidden_sizes=[8], alpha=1.0)
    x = torch.bernoulli(torch.full((6, 16), 0.5))
    y = torch.tensor([0, 1, 1, 0, 1, 0])
    with param_scope(m2), pytest.warns(UserWarning, match=r"class\(es\) \[2, 3\]"):
        pyrovae.infer.make_objective("enum").differentiable_loss(m2.model, m2.guide, x, y)


def test_linear_models_and_nmf_check_values_once():
    with pytest.raises(ValueError, match="NaN or inf"):
        with param_scope(fa := FactorAnalysis(3, 1)):
            Trace_ELBO().loss(fa.model, fa.guide, torch.tensor([[0.0, float("nan"), 1.0]]))
    nmf = NMF(3, 1, hidden_sizes=[4])
    with pytest.raises(ValueError, match="counts"), param_scope(nmf):
        Trace_ELBO().loss(nmf.model, nmf.guide, torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.5, 1.0]]))


# ------------------------------------------------------------------ user networks


class TinyEncoder(nn.Module):
    def __init__(self, d=16, k=2):
        super().__init__()
        self.net = nn.Linear(d, 2 * k)

    def forward(self, x):
        loc, raw = self.net(x).chunk(2, -1)
        return loc, nn.functional.softplus(raw) + 1e-3


def test_vae_runs_user_networks_and_its_checkpoint_round_trips(tmp_path):
    decoder = nn.Sequential(nn.Linear(2, 16))
    vae = VAE(16, 2, encoder=TinyEncoder(), decoder=decoder)
    assert vae.decoder is decoder and isinstance(vae.encoder, TinyEncoder)
    names = {name for name, _ in vae.named_parameters()}
    assert names == {"encoder.net.weight", "encoder.net.bias", "decoder.0.weight",
                     "decoder.0.bias"}
    x = torch.bernoulli(torch.full((8, 16), 0.5))
    loc, _ = vae.encode(x)
    assert torch.equal(vae.decode(loc), torch.sigmoid(vae.decoder(loc)))
    path = pyrovae.save_checkpoint(tmp_path / "v.pt", vae)
    # The file holds the networks' classes and weights, not their code: the caller builds them.
    with pytest.raises(pyrovae.infer.CheckpointError, match=r"networks=\{'encoder': ..., "):
        pyrovae.load_checkpoint(path)
    loaded = pyrovae.load_checkpoint(
        path, networks={"encoder": TinyEncoder(), "decoder": nn.Sequential(nn.Linear(2, 16))})
    assert torch.equal(loaded.decode(loc), vae.decode(loc))


def test_m2_runs_user_networks():
    classifier = nn.Linear(16, 3)
    decoder = nn.Linear(2 + 3, 16)
    m2 = M2(16, 3, 2, alpha=1.0, classifier=classifier, decoder=decoder,
            encoder=LabelEmbeddingEncoder())
    x = torch.bernoulli(torch.full((6, 16), 0.5))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    assert torch.equal(m2.class_logits(x), m2.classifier(x))
    z = torch.randn(6, 2)
    assert torch.equal(m2.decode(z, y), torch.sigmoid(m2.decoder(torch.cat(
        [z, nn.functional.one_hot(y, 3).float()], -1))))
    with param_scope(m2):
        loss = pyrovae.infer.make_objective("enum").differentiable_loss(m2.model, m2.guide, x)
    assert torch.isfinite(loss)


class LabelEmbeddingEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.x, self.y = nn.Linear(16, 4), nn.Embedding(3, 4)

    def forward(self, x, y):
        loc, raw = (self.x(x) + self.y(y)).chunk(2, -1)
        return loc, nn.functional.softplus(raw) + 1e-3


# ------------------------------------------------------------------ one vocabulary


def test_sample_draws_z_from_the_prior_and_decodes_it():
    vae = VAE(16, 2, hidden_sizes=[8])
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(5, 2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(vae.sample(5, generator=gen), vae.decode(z))
    m2 = M2(16, 3, 2, hidden_sizes=[8], alpha=1.0)
    y = torch.tensor([0, 2, 1, 1, 0])
    got = m2.sample(y, generator=torch.Generator().manual_seed(3))
    assert torch.equal(got, m2.decode(z, y))
    for model in (PPCA(16, 2), FactorAnalysis(16, 2)):
        got = model.sample(5, generator=torch.Generator().manual_seed(3))
        assert torch.allclose(got, z @ model.W.detach().T + model.mu.detach())


SMILES_TOKENS = SmilesVocabulary.build(["CCO", "c1ccccc1"]).tokens
SAMPLERS = {
    "vae": (lambda: VAE(16, 2, hidden_sizes=[8]), dict(num_samples=6)),
    "m2": (lambda: M2(16, 3, 2, hidden_sizes=[8], alpha=1.0), dict(y=torch.tensor([0, 2, 1]))),
    "ppca": (lambda: PPCA(16, 2), dict(num_samples=6)),
    "factor_analysis": (lambda: FactorAnalysis(16, 2), dict(num_samples=6)),
    "smiles_vae": (lambda: SMILESVAE(SMILES_TOKENS, latent_dim=2, embedding_dim=3, hidden_size=4,
                                     encoder_hidden_size=3, max_length=5), dict(n=6)),
    "char_rnn": (lambda: CharRNN(SMILES_TOKENS, embedding_dim=3, hidden_size=4, max_length=5),
                 dict(n=6)),
}


# The sequence models always draw their tokens: they take no ``mean``.
@pytest.mark.parametrize("name, mean", [(name, mean) for name in sorted(SAMPLERS)
                                        for mean in ([None] if name in ("smiles_vae", "char_rnn")
                                                     else [True, False])])
def test_sample_is_decided_by_its_generator_in_the_models_dtype(name, mean):
    build, arguments = SAMPLERS[name]
    model = build().double()
    if mean is not None:
        arguments = dict(arguments, mean=mean)
    global_state = torch.get_rng_state()
    first = model.sample(**arguments, generator=torch.Generator().manual_seed(5))
    again = model.sample(**arguments, generator=torch.Generator().manual_seed(5))
    other = model.sample(**arguments, generator=torch.Generator().manual_seed(6))
    assert torch.equal(torch.get_rng_state(), global_state)  # the generator alone draws
    if isinstance(first, list):  # SMILES strings
        assert first == again and first != other
        return
    assert torch.equal(first, again) and not torch.equal(first, other)
    parameter = next(model.parameters())
    assert first.dtype == parameter.dtype == torch.float64
    assert first.device == parameter.device


def test_encoder_and_decoder_are_networks_and_decode_is_the_mean_where_it_exists():
    sketch = SketchRNN(latent_dim=2, encoder_size=3, decoder_size=4, num_mixtures=1,
                       max_length=5)
    smiles = SMILESVAE(SmilesVocabulary.build(["CCO", "c1ccccc1"]).tokens, latent_dim=2,
                       embedding_dim=3, hidden_size=4, encoder_hidden_size=3, max_length=5)
    vae = VAE(16, 2, hidden_sizes=[8])
    models = [vae, M2(16, 3, 2, hidden_sizes=[8], alpha=1.0), NMF(16, 2, hidden_sizes=[8]),
              sketch, smiles]
    for model in models:
        for name in ("encoder", "decoder"):
            if hasattr(model, name):
                assert isinstance(getattr(model, name), nn.Module), (type(model), name)
    z = torch.randn(4, 2)
    assert torch.equal(vae.decode(z), vae.decode(z))  # a mean: no draw
    # Autoregressive decoders have no closed-form E[x | z]: they generate, seeded, instead.
    for model in (sketch, smiles):
        assert not hasattr(model, "decode")
        first = model.generate(z, generator=torch.Generator().manual_seed(0))
        again = model.generate(z, generator=torch.Generator().manual_seed(0))
        assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert smiles.generate_smiles(z, greedy=True) == smiles.vocab.decode(
        smiles.generate(z, greedy=True))


def test_log_marginal_is_a_method_where_it_is_exact():
    x = torch.randn(7, 5, dtype=torch.float64)
    for model, function in [(PPCA(5, 2), ppca_log_marginal),
                            (FactorAnalysis(5, 2), fa_log_marginal)]:
        model = model.double()
        assert torch.equal(model.log_marginal(x), function(x, model.params()))
        cov = model.params().W @ model.params().W.T + torch.diag(
            model.params()[2].expand(5) if model.params()[2].dim() == 0 else model.params()[2])
        want = torch.distributions.MultivariateNormal(model.params().mu, cov).log_prob(x)
        assert torch.allclose(model.log_marginal(x), want, atol=1e-10)
    assert not hasattr(ICA(5, 2), "log_marginal")  # Laplace sources: no closed form


def test_set_guide_to_posterior_and_posterior_share_one_computation():
    ppca = PPCA(5, 2).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    ppca.set_guide_to_posterior()
    mean, cov = ppca_posterior(x, ppca.params())
    g_mean, g_cov = ppca.guide_posterior(x)
    assert torch.allclose(g_mean, mean, atol=1e-12) and torch.allclose(g_cov, cov, atol=1e-12)
    # Bayes' rule by brute force: the joint Gaussian of (z, x), conditioned on x.
    W, mu, s2 = ppca.params()
    cxx = W @ W.T + s2 * torch.eye(5, dtype=torch.float64)
    assert torch.allclose(mean, (W.T @ torch.linalg.solve(cxx, (x - mu).T)).T, atol=1e-10)
    assert torch.allclose(cov, torch.eye(2, dtype=torch.float64) - W.T @ torch.linalg.solve(cxx, W),
                          atol=1e-10)


def test_networks_docstring_example_runs():
    example = re.search(r"Example::\n\n((?:    .*\n|\n)+)", networks.__doc__).group(1)
    namespace = {"x": torch.rand(3, 784)}
    exec(re.sub(r"^    ", "", example, flags=re.M), namespace)
    assert namespace["logits"].shape == (3, 784)


def test_hidden_sizes_is_the_one_name():
    for model in (VAE(16, 2, hidden_sizes=[8]), M2(16, 3, 2, hidden_sizes=[8], alpha=1.0),
                  NMF(16, 2, hidden_sizes=[8])):
        assert model.config["hidden_sizes"] == [8]
