"""A Docker image built from a build context and its Dockerfile, as Cloud Build's `docker build`
would, on this machine: the instructions a job's image uses are carried out, the base image is
not fetched (this machine's system stands in for it: guests/container.py).

- FROM: recorded; its files are this machine's (bash, gcloud, curl, python3).
- ENV, ARG (its default), WORKDIR, USER, ENTRYPOINT, CMD, LABEL, EXPOSE: as Docker reads them.
- COPY (and ADD of local files): from the context, minus what `.dockerignore` leaves out (the last
  pattern that matches decides; `!` keeps), modes kept, into the image's root.
- RUN: `/bin/sh -c` (or the exec form) as root in a container over the image's root, its writes
  kept; `pip install` finds the project's own packages offline (cloudbuild/wheelhouse.py).

An image is a directory (its root) and a config (image.json): what a Cloud Run task runs."""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import posixpath
import shlex
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gcp_emulator.guests import container

WHEELHOUSE = ".emulator-wheelhouse"  # in the image's root while a RUN step runs


class BuildError(Exception):
    """The build failed; the message is what the build's log ends with."""


@dataclass
class Image:
    root: Path
    base: str = ""
    env: dict[str, str] = field(default_factory=dict)
    user: str = "0:0"
    workdir: str = "/"
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    digest: str = ""

    def save(self) -> None:
        config = asdict(self)
        config["root"] = str(self.root)
        (self.root.parent / "image.json").write_text(json.dumps(config, indent=1))

    @classmethod
    def load(cls, directory: Path) -> Image:
        config = json.loads((directory / "image.json").read_text())
        config["root"] = Path(config["root"])
        return cls(**config)


Wrap = Callable[[list[str]], list[str]]


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) for each instruction, continuation lines joined."""
    out: list[tuple[str, str]] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        word, _, rest = current.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        current = ""
    if current.strip():
        word, _, rest = current.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def words(args: str) -> list[str]:
    """An instruction's arguments: the JSON (exec) form, or shell words."""
    if args.startswith("["):
        try:
            value = json.loads(args)
        except json.JSONDecodeError as exc:
            raise BuildError(f"malformed JSON in {args!r}: {exc}") from None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise BuildError(f"the exec form must be a JSON array of strings: {args!r}")
        return value
    return shlex.split(args)


def pairs(args: str, env: dict[str, str]) -> dict[str, str]:
    """ENV/LABEL/ARG's `k=v k2="v 2"` (or the legacy `k v`), $VARs of env expanded."""
    items = shlex.split(args)
    if items and "=" not in items[0]:
        return {items[0]: expand(" ".join(items[1:]), env)}
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key] = expand(value, env)
    return out


def expand(value: str, env: dict[str, str]) -> str:
    """$VAR and ${VAR} of the build's environment, as Docker expands them in instructions."""
    for key in sorted(env, key=len, reverse=True):
        value = value.replace("${" + key + "}", env[key]).replace("$" + key, env[key])
    return value


def ignored(patterns: list[str]) -> Callable[[str], bool]:
    """.dockerignore's verdict on a context path (the last pattern that matches decides)."""

    def decide(rel: str) -> bool:
        out = False
        parts = rel.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        for pattern in patterns:
            negate = pattern.startswith("!")
            pat = pattern.lstrip("!").strip("/")
            if any(fnmatch.fnmatchcase(p, pat) for p in prefixes):
                out = not negate
        return out

    return decide


def build(
    context: Path,
    out: Path,
    wheelhouse: Path | None,
    wrap: Wrap,
    log: Callable[[str], None],
    dockerfile: str = "Dockerfile",
    stop: threading.Event | None = None,
) -> Image:
    """The image of context/dockerfile, its root in out/rootfs; log gets each line of the
    build's log. Raises BuildError, at once when `stop` is set (a cancel, a timeout: a RUN
    step's processes are killed)."""
    stop = stop or threading.Event()
    source = context / dockerfile
    if not source.is_file():
        raise BuildError(f"unable to prepare context: lstat {source}: no such file or directory")
    ignore_file = context / ".dockerignore"
    lines = ignore_file.read_text().splitlines() if ignore_file.is_file() else []
    patterns = [p.strip() for p in lines if p.strip() and not p.startswith("#")]
    is_ignored = ignored(patterns)
    if out.exists():
        shutil.rmtree(out)
    image = Image(root=out / "rootfs")
    image.root.mkdir(parents=True)
    args: dict[str, str] = {}
    steps = instructions(source.read_text())
    for n, (word, rest) in enumerate(steps, start=1):
        if stop.is_set():
            raise BuildError("the build was stopped")
        log(f"Step {n}/{len(steps)} : {word} {rest}")
        env = {**args, **image.env}
        if word == "FROM":
            image.base = rest.split()[0]
            log(f" ---> {image.base}: this machine's system stands in for it")
        elif word == "ARG":
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip().strip('"')
        elif word == "ENV":
            image.env.update(pairs(rest, env))
        elif word == "LABEL":
            image.labels.update(pairs(rest, env))
        elif word == "WORKDIR":
            path = expand(rest, env)
            image.workdir = path if path.startswith("/") else f"{image.workdir.rstrip('/')}/{path}"
        elif word == "USER":
            image.user = expand(rest, env)
        elif word == "ENTRYPOINT":
            image.entrypoint = words(rest) if rest.startswith("[") else ["/bin/sh", "-c", rest]
        elif word == "CMD":
            image.cmd = words(rest) if rest.startswith("[") else ["/bin/sh", "-c", rest]
        elif word in ("COPY", "ADD"):
            copy(context, image, [expand(w, env) for w in words(rest)], is_ignored, log)
        elif word == "RUN":
            run_step(image, rest, env, wheelhouse, wrap, log, stop)
        elif word in ("EXPOSE", "VOLUME", "STOPSIGNAL", "HEALTHCHECK", "SHELL", "ONBUILD"):
            log(f" ---> {word}: recorded, nothing to do here")
        else:
            raise BuildError(f"unknown instruction: {word}")
    image.digest = "sha256:" + digest_of(image)
    image.save()
    log(f"Successfully built {image.digest[7:19]}")
    return image


def copy(
    context: Path,
    image: Image,
    items: list[str],
    is_ignored: Callable[[str], bool],
    log: Callable[[str], None],
) -> None:
    flags = [w for w in items if w.startswith("--")]
    paths = [w for w in items if not w.startswith("--")]
    if any(not f.startswith("--chown=") and not f.startswith("--chmod=") for f in flags):
        raise BuildError(f"COPY {' '.join(flags)}: only --chown and --chmod are known here")
    if len(paths) < 2:
        raise BuildError("COPY needs a source and a destination")
    *sources, dest = paths
    dest_is_dir = dest.endswith("/") or dest in (".", "..") or len(sources) > 1
    # as Docker takes it: relative to WORKDIR, and never above the image's root
    dest = posixpath.normpath("/" + posixpath.join(image.workdir or "/", dest))
    top = dest.strip("/").split("/", 1)[0]
    if top in container.RESERVED:
        raise BuildError(
            f"COPY to {dest}: an image's own files stay out of /{top} here (this machine's "
            "system stands in for the base image there)"
        )
    for src in sources:
        rel = os.path.normpath(src.lstrip("/"))
        if rel.startswith(".."):
            raise BuildError(f"COPY failed: forbidden path outside the build context: {src}")
        path = context / rel
        if not path.exists() or (rel != "." and is_ignored(rel)):
            raise BuildError(
                "COPY failed: file not found in build context or excluded by .dockerignore: "
                f"stat {src}: file does not exist"
            )
        dest_path = image.root / dest.lstrip("/")
        if path.is_dir():
            for f in sorted(path.rglob("*")):
                frel = f.relative_to(context).as_posix()
                if (f.is_dir() and not f.is_symlink()) or is_ignored(frel):
                    continue
                put(f, dest_path / f.relative_to(path), image.root)
        else:
            put(path, dest_path / path.name if dest_is_dir else dest_path, image.root)
        log(f" ---> copied {src} to {dest}")


def put(src: Path, dest: Path, root: Path) -> None:
    """src to dest in the image at root, the mode with it (as COPY keeps it), a link as a link;
    never through a link out of the image (a RUN step's `ln -s /etc x` then `COPY f x/`)."""
    existing = dest.parent
    while not existing.exists() and not existing.is_symlink():
        existing = existing.parent
    if not existing.resolve().is_relative_to(root.resolve()):
        raise BuildError(f"COPY failed: {dest.relative_to(root)} leads out of the image")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_symlink():
        dest.unlink()
    shutil.copy2(src, dest, follow_symlinks=False)


def run_step(
    image: Image,
    rest: str,
    env: dict[str, str],
    wheelhouse: Path | None,
    wrap: Wrap,
    log: Callable[[str], None],
    stop: threading.Event,
) -> None:
    command = words(rest) if rest.startswith("[") else ["/bin/sh", "-c", rest]
    step_env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        **env,
    }
    offline = image.root / WHEELHOUSE
    if wheelhouse is not None:  # offline: the project's own packages (wheelhouse.py)
        shutil.copytree(wheelhouse, offline, dirs_exist_ok=True)
        step_env |= {
            "PIP_NO_INDEX": "1",
            "PIP_FIND_LINKS": f"/{WHEELHOUSE}",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PIP_ROOT_USER_ACTION": "ignore",
        }
    argv = wrap(container.argv(image.root, None, "0:0", image.workdir, command))
    proc = subprocess.Popen(
        argv,
        env=step_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        while True:
            try:
                out, _ = proc.communicate(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if stop.is_set():
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.communicate()
                    raise BuildError("the build was stopped") from None
    finally:
        if proc.poll() is None:  # interrupted some other way: nothing of it outlives the step
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        container.forget_mountpoints(image.root)
        shutil.rmtree(offline, ignore_errors=True)
    for line in out.splitlines():
        log(line)
    if proc.returncode != 0:
        raise BuildError(
            f"The command '{' '.join(command)}' returned a non-zero code: {proc.returncode}"
        )


def digest_of(image: Image) -> str:
    h = hashlib.sha256()
    for path in sorted(image.root.rglob("*")):
        if path.is_symlink():  # its target's name, never what it points at
            h.update(path.relative_to(image.root).as_posix().encode())
            h.update(os.readlink(path).encode())
        elif path.is_file():
            h.update(path.relative_to(image.root).as_posix().encode())
            h.update(path.read_bytes())
    config = [image.env, image.user, image.workdir, image.entrypoint, image.cmd]
    h.update(json.dumps(config).encode())
    return h.hexdigest()
