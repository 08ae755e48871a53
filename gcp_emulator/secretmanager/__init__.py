"""Secret Manager v1: secrets and their versions."""
