"""The package index a build's `pip install` gets offline: the project's own locked environment
(the packages uv.lock pins, installed where the emulator runs), each rebuilt as the wheel it was
installed from (its files, as its RECORD lists them). A `RUN pip install` in the Dockerfile gets
the versions the project pins, and a package the project does not have fails the build as pip
fails without a network: nothing leaves the machine."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import sysconfig
import zipfile
from pathlib import Path

# what an installer adds to a distribution's metadata: not part of the wheel
INSTALLER_FILES = {"INSTALLER", "REQUESTED", "RECORD", "direct_url.json"}


def build(out: Path, site_packages: Path | None = None) -> list[Path]:
    """A wheel in `out` for each distribution installed in site_packages (the emulator's own,
    by default); returns them. Made once: wheels already there are kept."""
    site = site_packages or Path(sysconfig.get_paths()["purelib"])
    out.mkdir(parents=True, exist_ok=True)
    made = []
    for info in sorted(site.glob("*.dist-info")):
        wheel = wheel_of(info, site, out)
        if wheel is not None:
            made.append(wheel)
    return made


def wheel_of(info: Path, site: Path, out: Path) -> Path | None:
    try:
        tags = [
            line.split(":", 1)[1].strip()
            for line in (info / "WHEEL").read_text().splitlines()
            if line.startswith("Tag:")
        ]
        record = (info / "RECORD").read_text()
    except OSError:
        return None  # not installed from a wheel (an editable install, say)
    name, _, version = info.name.removesuffix(".dist-info").partition("-")
    target = out / f"{name}-{version}-{tags[0] if tags else 'py3-none-any'}.whl"
    if target.exists():
        return target
    files = []
    for row in csv.reader(io.StringIO(record)):
        path = row[0] if row else ""
        if not path or path.startswith("..") or "__pycache__" in path or path.endswith(".pyc"):
            continue
        if path.startswith(info.name + "/") and path.split("/", 1)[1] in INSTALLER_FILES:
            continue
        if (site / path).is_file():
            files.append(path)
    rows = []
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in files:
            data = (site / path).read_bytes()
            zf.writestr(path, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            rows.append(f"{path},sha256={digest},{len(data)}")
        rows.append(f"{info.name}/RECORD,,")
        zf.writestr(f"{info.name}/RECORD", "\n".join(rows) + "\n")
    return target
