"""Shared foundations every stage uses: atomic file I/O and provenance, the results schema,
``TokenDataset``, organism models and hook-name checks, activations at hook points, ``Subspace``."""
