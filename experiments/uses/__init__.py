"""What a trained VAE is for: imputation, denoising and anomaly scores (issue #15)."""
