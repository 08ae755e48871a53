"""Service Usage: which APIs the project has enabled."""
