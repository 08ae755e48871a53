"""A container for a Cloud Run task, or for a build's RUN step, as root on this host: a mount
namespace of its own whose root is the image's files over this machine's system (its /usr, /etc,
/opt and /var stand in for the image's base: bash, gcloud, curl, python3), a private /tmp and
/home in memory (HOME, the user's, made there), /proc, /dev and /sys; entered with chroot as
the image's user, in its WORKDIR.

Started with `unshare --mount` (and, in the private network, under its nsenter), it keeps its
pid through every exec to the command itself: a signal to that pid is a signal to the image's
ENTRYPOINT, as Cloud Run sends it to the container's main process.

A task sees the image's own directories read-only (Cloud Run's container filesystem is writable,
in memory: the emulator's is not, but for /tmp: assumed enough, as our image writes only there);
a build's RUN step writes into the image's root itself, which is what the build keeps. This
machine's /usr, /etc, /opt and /var are read-only to both: a step's `pip install` without
--target, or its `ln -sf … /etc/localtime`, fails here rather than change this machine (on
Cloud Build it would change the image: keep such steps to the image's own directories)."""

from __future__ import annotations

import contextlib
import pwd
from pathlib import Path

# The machine's directories that stand in for the image's base, bound into every container,
# and the merged-/usr links beside them; an image's own files may not be in them.
SYSTEM_DIRS = ("usr", "etc", "opt", "var")
SYSTEM_LINKS = ("bin", "sbin", "lib", "lib64", "lib32", "libx32")
KERNEL_DIRS = ("proc", "dev", "sys", "tmp", "run", "home")
RESERVED = frozenset(SYSTEM_DIRS + SYSTEM_LINKS + KERNEL_DIRS)

SETUP = r"""
set -eu
root=$1 image=$2 user=$3 workdir=$4
shift 4
if [ "$image" != - ]; then # a task: the image's directories over an empty root, read-only
  mount -t tmpfs -o mode=0755 tmpfs "$root"
  for entry in "$image"/*; do
    [ -e "$entry" ] || continue
    name=${entry##*/}
    mkdir -p "$root/$name"
    mount --bind "$entry" "$root/$name"
    mount -o remount,bind,ro "$root/$name"
  done
fi
for d in usr etc opt var; do # read-only: this machine's system is not the image's to change
  [ -d "/$d" ] || continue
  mkdir -p "$root/$d"
  mount --rbind "/$d" "$root/$d"
  mount -o remount,bind,ro "$root/$d"
done
for l in bin sbin lib lib64 lib32 libx32; do
  if [ -L "/$l" ]; then
    [ -e "$root/$l" ] || [ -L "$root/$l" ] || ln -s "$(readlink "/$l")" "$root/$l"
  elif [ -d "/$l" ]; then
    mkdir -p "$root/$l"
    mount --rbind "/$l" "$root/$l"
    mount -o remount,bind,ro "$root/$l"
  fi
done
mkdir -p "$root/proc" "$root/dev" "$root/sys" "$root/tmp" "$root/run" "$root/home"
mount --rbind /proc "$root/proc"
mount --rbind /dev "$root/dev"
mount --rbind /sys "$root/sys"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
mount -t tmpfs -o mode=0755 tmpfs "$root/run"
mount -t tmpfs -o mode=0755 tmpfs "$root/home"
if [ -n "${HOME:-}" ] && [ "$HOME" != / ] && [ "$HOME" != /root ]; then # the user's, in memory
  mkdir -p "$root$HOME" && chown "$user" "$root$HOME"
fi
mkdir -p "$root$workdir"
chroot=$(PATH=/usr/sbin:/sbin:/usr/bin:/bin command -v chroot)
exec "$chroot" --userspec="$user" "$root" /usr/bin/env --chdir="$workdir" "$@"
"""


def argv(root: Path, image: Path | None, user: str, workdir: str, command: list[str]) -> list[str]:
    """The command that runs `command` in a container at root (an empty directory of the
    emulator's, for a task over `image`; the image's own root for a build's step, image None)
    as user ("UID:GID", or a name), in workdir."""
    return [
        "unshare", "--mount", "--propagation", "private", "--",
        "/bin/bash", "-c", SETUP, "container",
        str(root), str(image) if image is not None else "-", user, workdir or "/", *command,
    ]  # fmt: skip


def home_of(user: str) -> str:
    """The home of the image's USER ("UID[:GID]" or a name) in the image's /etc/passwd (this
    machine's), as Docker sets HOME; "/" for a user it does not know."""
    name = user.split(":", 1)[0]
    try:
        entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except KeyError:
        return "/"
    return entry.pw_dir


def forget_mountpoints(root: Path) -> None:
    """After a build's step: the mount points and links SETUP left in the image's root (empty
    outside the step's namespace) are not the image's."""
    for name in RESERVED:
        path = root / name
        if path.is_symlink():
            path.unlink()
        elif path.is_dir():
            # not empty: the image's own (COPY refuses that; a RUN step made it)
            with contextlib.suppress(OSError):
                path.rmdir()
