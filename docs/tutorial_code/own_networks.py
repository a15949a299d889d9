"""Tutorial part 3: the library's VAE and M2 with networks you write yourself.

Run it: ``python docs/tutorial_code/own_networks.py``. The tests run ``main()`` with its
defaults and check what it returns.
"""

# --8<-- [start:imports]
import torch
from torch import nn

from pyrovae import fit
from pyrovae.models import M2, VAE

# --8<-- [end:imports]

D, K, C = 16, 2, 3  # pixels, latent dimensions, classes


# --8<-- [start:vae]
class Encoder(nn.Module):
    """x [..., D] -> (loc [..., K], scale [..., K]), scale > 0."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(D, 32), nn.LayerNorm(32), nn.GELU())
        self.loc, self.raw_scale = nn.Linear(32, K), nn.Linear(32, K)

    def forward(self, x):
        h = self.body(x)
        return self.loc(h), nn.functional.softplus(self.raw_scale(h)) + 1e-4


def vae_with_own_networks() -> VAE:
    # The decoder returns raw outputs [..., D]: Bernoulli logits here.
    decoder = nn.Sequential(nn.Linear(K, 32), nn.GELU(), nn.Linear(32, D))
    return VAE(data_dim=D, latent_dim=K, encoder=Encoder(), decoder=decoder)
# --8<-- [end:vae]


# --8<-- [start:m2]
class LabelledEncoder(nn.Module):
    """(x [B, D], y) -> (loc, scale) of q(z | x, y).

    ``y`` holds integer labels that broadcast against [B]: [B] for labelled data, [C, 1] when M2
    enumerates the classes of unlabelled data (then loc and scale are [C, B, K]).
    """

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(D, 32), nn.Tanh())
        self.label = nn.Embedding(C, 32)  # label[y] broadcasts against body(x)
        self.loc, self.raw_scale = nn.Linear(32, K), nn.Linear(32, K)

    def forward(self, x, y):
        h = torch.tanh(self.body(x) + self.label(y))
        return self.loc(h), nn.functional.softplus(self.raw_scale(h)) + 1e-4


def m2_with_own_networks() -> M2:
    classifier = nn.Sequential(nn.Linear(D, 32), nn.Tanh(), nn.Linear(32, C))  # -> logits [.., C]
    decoder = nn.Sequential(nn.Linear(K + C, 32), nn.Tanh(), nn.Linear(32, D))  # [z, one_hot(y)]
    return M2(data_dim=D, num_classes=C, latent_dim=K, alpha=10.0,
              encoder=LabelledEncoder(), decoder=decoder, classifier=classifier)
# --8<-- [end:m2]


def make_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary 4x4 "images" of three classes: each class lights its own third of the pixels."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % C
    probs = torch.full((n, D), 0.1)
    for c in range(C):
        probs[y == c, c * 5:(c + 1) * 5] = 0.9
    return torch.bernoulli(probs, generator=gen), y


def main(num_points=600, epochs=15, seed=0):
    # --8<-- [start:train]
    x, y = make_data(num_points, seed)
    torch.manual_seed(seed)
    vae = vae_with_own_networks()
    vae_history = fit(vae, x, lr=0.01, epochs=epochs, batch_size=100, seed=seed)

    m2 = m2_with_own_networks()
    labelled = torch.arange(30)  # 10 labels per class; the rest unlabelled
    data = {"unlabelled": (x[30:],), "labelled": (x[labelled], y[labelled])}
    m2_history = fit(m2, data, objective="enum", lr=0.01, epochs=epochs, batch_size=100,
                     seed=seed)
    accuracy = (m2.classify(x[30:]) == y[30:]).float().mean().item()
    print(f"VAE loss {vae_history.losses[0]:.1f} -> {vae_history.losses[-1]:.1f}")
    print(f"M2 loss {m2_history.losses[0]:.1f} -> {m2_history.losses[-1]:.1f}, "
          f"accuracy on unlabelled points {accuracy:.3f}")
    # --8<-- [end:train]
    return dict(vae=vae, m2=m2, vae_losses=vae_history.losses, m2_losses=m2_history.losses,
                accuracy=accuracy, samples=m2.sample(torch.arange(C)))


if __name__ == "__main__":
    main()
