"""SMILES VAE on MOSES (Gómez-Bombarelli et al. 2018): training, metrics, latent figures."""
