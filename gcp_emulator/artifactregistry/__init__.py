"""Artifact Registry: repositories, and the images Cloud Build pushes to them."""
