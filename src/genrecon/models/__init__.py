"""Flows, conditioning networks and base distributions."""
