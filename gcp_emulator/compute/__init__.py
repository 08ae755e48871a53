"""Compute Engine v1: instances and their lifecycle, addresses, operations, stockouts."""
