"""Cloud Build: a build of a job's image from its source (dockerfile.py), offline, with the
project's own packages for its pip (wheelhouse.py)."""
