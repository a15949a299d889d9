"""Tutorial: save a model while it trains, and load it back for use.

Run it: ``python docs/tutorial_code/checkpoints.py``. The tests run ``main()`` with its defaults
and check what it returns.
"""

import tempfile
from pathlib import Path

import torch

# --8<-- [start:checkpoints]
import pyrovae
from pyrovae.models import VAE


def train_and_reload(x: torch.Tensor, run: Path, epochs: int = 5):
    torch.manual_seed(0)
    model = VAE(data_dim=x.shape[1], latent_dim=2, hidden_sizes=[32])
    # last.pt is written at every epoch's end (and resume=True continues from it).
    pyrovae.fit(model, x, lr=0.01, epochs=epochs, batch_size=100, checkpoint_dir=run)
    # A new model object, rebuilt from the class and config stored in the file, in eval mode.
    reloaded = pyrovae.load_checkpoint(run / "last.pt")
    return model, reloaded
# --8<-- [end:checkpoints]


def main(num_points: int = 300, epochs: int = 5, seed: int = 0) -> dict:
    x = torch.bernoulli(torch.full((num_points, 16), 0.3),
                        generator=torch.Generator().manual_seed(seed))
    with tempfile.TemporaryDirectory() as run:
        model, reloaded = train_and_reload(x, Path(run), epochs)
        codes, reloaded_codes = model.encode(x)[0], reloaded.encode(x)[0]
    print(f"largest difference between the two encodings: "
          f"{(codes - reloaded_codes).abs().max():.2e}")
    return dict(model=model, reloaded=reloaded, codes=codes, reloaded_codes=reloaded_codes)


if __name__ == "__main__":
    main()
