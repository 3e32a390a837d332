"""charrnn_jax: byte-level RNN language models in JAX/Flax."""

__version__ = "0.1.0"
