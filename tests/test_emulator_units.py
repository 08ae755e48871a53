"""Emulator details that need no server: checksums and fingerprints."""

from __future__ import annotations

from gcp_emulator.cloud import same_fingerprint
from gcp_emulator.crc32c import crc32c


def test_crc32c_is_castagnoli():
    assert crc32c(b"123456789") == 0xE3069283, "the standard CRC32C check value"
    assert crc32c(b"") == 0


def test_a_fingerprint_sent_back_url_safe_still_matches():
    # gcloud decodes the bytes field and encodes it again URL-safe: '+' '/' come back '-' '_'.
    assert same_fingerprint("ab-_AAAAAAA=", "ab+/AAAAAAA=")
    assert same_fingerprint("ab+/AAAAAAA=", "ab+/AAAAAAA=")


def test_a_different_or_malformed_fingerprint_does_not_match():
    assert not same_fingerprint("AAAAAAAAAAA=", "AQAAAAAAAAA=")
    assert not same_fingerprint("not base64!", "AQAAAAAAAAA=")
    assert not same_fingerprint(None, "AQAAAAAAAAA=")
