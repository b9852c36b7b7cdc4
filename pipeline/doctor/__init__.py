"""Leakage doctor: what in a cache would make the evaluation lie."""
