"""Posterior estimates from trained flows: conditional mean / std, sample refinement."""
