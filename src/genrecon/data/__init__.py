"""Datasets in their real on-disk formats: readers, writers, downloads, embedded sets."""
