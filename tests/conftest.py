"""Hypothesis runs derandomized, so CI and every machine check the same cases; explore new
ones with `pytest --hypothesis-profile=explore`."""

from hypothesis import settings

settings.register_profile("deterministic", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, max_examples=200)
settings.load_profile("deterministic")
