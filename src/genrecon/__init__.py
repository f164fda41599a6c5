"""genrecon: reproducible pipelines for generative models in imaging inverse problems."""

__version__ = "0.1.0"
