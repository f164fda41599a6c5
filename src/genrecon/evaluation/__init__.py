"""Evaluation protocols: posterior mean/std, point estimates, sweeps (see protocols.py)."""
