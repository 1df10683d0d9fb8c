"""Activation extraction: a transformer over the corpus, one vector per word at every requested layer."""
