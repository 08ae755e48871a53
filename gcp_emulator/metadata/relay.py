"""The QEMU guest's way to its metadata server: QEMU runs this for every TCP connection the VM
opens to 169.254.169.254:80 (slirp's `guestfwd=...-cmd:`), with the connection on stdin and
stdout. It connects to the emulator on loopback and copies both ways, rewriting each request's
path `/computeMetadata/...` to `/vm/ZONE/INSTANCE/computeMetadata/...`, the emulator's path for
that VM's own metadata (what Google's metadata server knows from the caller's address). Every
other path (Secret Manager's `/v1/...`, which the image's gcloud is pointed at) passes as is.

Requests are read one after another as HTTP/1.1 frames them (request line, headers, a
Content-Length body; a chunked body is copied through to its last chunk), so a client that keeps
the connection alive (the guest agent, gcloud) is rewritten on every request. Answers are
copied back untouched.

    python -m gcp_emulator.metadata.relay PORT ZONE INSTANCE
"""

from __future__ import annotations

import os
import socket
import sys
import threading

MAX_HEAD = 64 * 1024


def rewrite(line: bytes, prefix: bytes) -> bytes:
    """One request line, its metadata path moved under prefix."""
    parts = line.split(b" ", 2)
    if len(parts) == 3 and parts[1].startswith(b"/computeMetadata/"):
        parts[1] = prefix + parts[1]
    return b" ".join(parts)


class Reader:
    """Buffered reads from a file descriptor."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""

    def _fill(self) -> bool:
        chunk = os.read(self.fd, 65536)
        self.buf += chunk
        return bool(chunk)

    def line(self) -> bytes | None:
        while b"\n" not in self.buf:
            if len(self.buf) > MAX_HEAD or not self._fill():
                return None
        line, self.buf = self.buf.split(b"\n", 1)
        return line + b"\n"

    def exactly(self, n: int) -> bytes | None:
        while len(self.buf) < n:
            if not self._fill():
                return None
        data, self.buf = self.buf[:n], self.buf[n:]
        return data


def forward_requests(src: Reader, sock: socket.socket, prefix: bytes) -> None:
    """Guest to emulator, request by request, until the guest closes its side."""
    while True:
        line = src.line()
        if line is None:
            return
        if not line.strip():  # a stray empty line between requests
            sock.sendall(line)
            continue
        head = [rewrite(line, prefix)]
        length, chunked = 0, False
        while True:
            header = src.line()
            if header is None:
                sock.sendall(b"".join(head))
                return
            head.append(header)
            if not header.strip():
                break
            name, _, value = header.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip() or 0)
            elif name.strip().lower() == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
        sock.sendall(b"".join(head))
        if chunked:
            while True:
                size_line = src.line()
                if size_line is None:
                    return
                sock.sendall(size_line)
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                data = src.exactly(size + 2)  # the chunk and its CRLF
                if data is None:
                    return
                sock.sendall(data)
                if size == 0:
                    break
        elif length:
            body = src.exactly(length)
            if body is None:
                return
            sock.sendall(body)


def copy_answers(sock: socket.socket, out: int) -> None:
    while True:
        data = sock.recv(65536)
        if not data:
            return
        os.write(out, data)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m gcp_emulator.metadata.relay PORT ZONE INSTANCE", file=sys.stderr)
        return 2
    port, zone, instance = int(argv[0]), argv[1], argv[2]
    prefix = f"/vm/{zone}/{instance}".encode()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    answers = threading.Thread(target=copy_answers, args=(sock, 1), daemon=True)
    answers.start()
    try:
        forward_requests(Reader(0), sock, prefix)
        sock.shutdown(socket.SHUT_WR)
        answers.join()
    except (OSError, ValueError):
        return 1
    finally:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
