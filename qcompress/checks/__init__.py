"""Checks of an artifact against its original or another file: verify, compare, and the gates."""
