"""Krause Synchronization Transformers in JAX/Flax."""
