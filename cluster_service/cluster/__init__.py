"""Clustering stage: exact Ward reference, scalable approximate Ward, cuts, concept tables, quality.

The cores (``exact``, ``micro``, ``ward``, ``cut``, ``quality``, ``concepts``) take and return arrays;
``stage`` reads the run store, orchestrates (optionally over Ray) and writes results.
"""
