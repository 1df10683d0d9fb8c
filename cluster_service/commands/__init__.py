"""One module per CLI verb; each exposes ``register(subparsers)`` that sets ``func`` on its parser."""
