"""A local stand-in for the parts of Google Cloud this project uses.

Compute Engine v1 (instances, addresses, zone operations, serial port), Secret Manager v1 and
the metadata server, on one loopback port, faithful enough that the real `gcloud` CLI cannot
tell (docs/google-cloud.md). Starting an instance runs its `startup-script` as a local process
group (the guest). `python -m gcp_emulator --help` for the CLI; docs/emulator.md for the rest.
"""
