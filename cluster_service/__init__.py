"""cluster_service: discover the latent concepts a language model has learned, at corpus scale."""

__version__ = "0.1.0"
