"""Length-bucketed batches: coverage, determinism, trimming, and their use by ``fit``."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyrovae import fit
from pyrovae.data.buckets import LengthBuckets, bucketed_batches
from pyrovae.models import SketchRNN
from pyrovae.models.sequence import trim_to_longest
from pyrovae.models.smiles_vae import SMILESVAE


def _lengths(n=1000, seed=0):
    return torch.randint(3, 200, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("n,batch_size,pool", [(1000, 32, 5), (101, 10, 3), (7, 100, 50)])
def test_every_example_once_per_epoch(n, batch_size, pool):
    lengths = _lengths(n)
    for epoch in range(3):
        batches = bucketed_batches(lengths, batch_size, seed=1, epoch=epoch, pool=pool)
        seen = torch.cat(batches)
        assert sorted(seen.tolist()) == list(range(n))
        assert max(len(b) for b in batches) <= batch_size
        # only the last batch of each pool may be short
        pools = -(-n // (pool * batch_size))
        assert sum(len(b) < batch_size for b in batches) <= pools


def test_batches_depend_only_on_seed_and_epoch():
    lengths = _lengths()
    a = bucketed_batches(lengths, 32, seed=3, epoch=4)
    b = bucketed_batches(lengths.clone(), 32, seed=3, epoch=4)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    other_epoch = bucketed_batches(lengths, 32, seed=3, epoch=5)
    other_seed = bucketed_batches(lengths, 32, seed=4, epoch=4)
    for other in (other_epoch, other_seed):
        assert any(not torch.equal(x, y) for x, y in zip(a, other, strict=False))


def test_batches_hold_similar_lengths():
    # Uniform lengths in 3..199: a random batch of 32 spans ~180 on average. Sorting pools of
    # 5 batches (160 sequences) leaves ~197/160 * 32 ~ 40 per batch; 60 leaves a wide margin.
    lengths = _lengths()
    batches = bucketed_batches(lengths, 32, seed=0, epoch=0, pool=5)
    spread = torch.tensor([float(lengths[b].max() - lengths[b].min()) for b in batches[:-2]])
    assert spread.mean() < 60
    random = torch.randperm(1000, generator=torch.Generator().manual_seed(0)).split(32)
    random_spread = torch.tensor([float(lengths[b].max() - lengths[b].min()) for b in random])
    assert random_spread.mean() > 150


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        bucketed_batches(_lengths(), 0, 0, 0)
    with pytest.raises(ValueError, match="pool"):
        LengthBuckets((torch.zeros(4, 2),), torch.ones(4, dtype=torch.long), 2, pool=0)
    with pytest.raises(ValueError, match="same number of rows"):
        LengthBuckets((torch.zeros(4, 2),), torch.ones(5, dtype=torch.long), 2)


def test_trim_to_longest():
    x = torch.arange(2 * 9).reshape(2, 9)
    assert torch.equal(trim_to_longest(x, torch.tensor([3, 5])), x[:, :6])
    assert torch.equal(trim_to_longest(x, torch.tensor([3, 5]), extra=0), x[:, :5])
    assert trim_to_longest(x, torch.tensor([8, 2])).shape == (2, 9)  # never longer than T


def _sketches(n, steps):
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(2, 12, (n,), generator=generator)
    x = torch.randn(n, steps, 5, generator=generator)
    pen = torch.randint(0, 2, (n, steps), generator=generator)
    x[..., 2:] = torch.nn.functional.one_hot(pen, 3).float()
    return x, lengths


def _loss(model, *data, subsample):
    pyro.set_rng_seed(0)
    guide = pyro.poutine.trace(model.guide).get_trace(*data, subsample=subsample)
    trace = pyro.poutine.trace(pyro.poutine.replay(model.model, guide)).get_trace(
        *data, subsample=subsample
    )
    return trace.log_prob_sum() - guide.log_prob_sum()


def test_trimmed_sketch_batches_have_the_same_elbo_and_run_fewer_steps():
    model = SketchRNN(latent_dim=3, encoder_size=4, decoder_size=5, num_mixtures=2, max_length=60)
    x, lengths = _sketches(6, 61)
    idx = torch.tensor([1, 4])
    seen = []
    model.decoder_rnn.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[1]))
    trimmed = _loss(model, x, lengths, subsample=idx)
    assert seen == [int(lengths[idx].max()) + 1]
    # the same sketches alone, padded to their own longest + 1 rows: the same ELBO
    alone = x[idx, : seen[0]]
    reference = _loss(model, alone, lengths[idx], subsample=torch.arange(2))
    scale = 6 / 2  # the first run's plate scales by N/M = 3, the second's by 1
    torch.testing.assert_close(trimmed, scale * reference, rtol=1e-5, atol=1e-4)


def test_trimmed_smiles_batches_have_the_same_elbo():
    tokens = ["<pad>", "<bos>", "<eos>", "C", "O", "N", "(", ")", "="]
    model = SMILESVAE(tokens, latent_dim=3, embedding_dim=4, hidden_size=6,
                      encoder_hidden_size=4)
    vocab = model.vocab
    data = vocab.encode(["CCO", "C", "CC(=O)NCCCCCCCCCCC", "NO"])
    idx = torch.tensor([1, 3])
    trimmed = _loss(model, *data, subsample=idx)
    short = vocab.encode(["C", "NO"])
    assert short[0].shape[1] < data[0].shape[1]
    reference = _loss(model, *short, subsample=torch.arange(2))
    torch.testing.assert_close(trimmed, 2 * reference, rtol=1e-5, atol=1e-4)


def test_fit_uses_the_planned_batches():
    lengths = _lengths(50)
    x = torch.randn(50)
    stream = LengthBuckets((x,), lengths, batch_size=8, pool=2)
    seen = []

    def model(x, subsample=None):
        loc = pyro.param("loc", torch.zeros(()))
        with pyro.plate("data", x.shape[0], subsample=subsample):
            seen.append(subsample.clone())
            pyro.sample("x", dist.Normal(loc, 1.0), obs=x[subsample])

    def guide(x, subsample=None):
        pass

    fit(model, stream, guide=guide, epochs=2, batch_size=8, seed=5, lr=0.01)
    expected = stream.batches(5, 0) + stream.batches(5, 1)
    # the first step may run the model twice (Pyro's checks): one entry per step
    seen = [b for k, b in enumerate(seen) if k == 0 or not torch.equal(b, seen[k - 1])]
    assert len(seen) == len(expected) == 2 * 7
    assert all(torch.equal(a, b) for a, b in zip(seen, expected, strict=True))
