"""The emulator's image build (gcp_emulator/cloudbuild): COPY as Docker places it and never out
of the image, the uploaded source unpacked only within its directory. No server, no container:
these builds have no RUN step."""

from __future__ import annotations

import io
import tarfile
import textwrap
from pathlib import Path

import pytest

from gcp_emulator.cloudbuild import dockerfile
from gcp_emulator.cloudbuild.models import extract


def build(tmp_path: Path, text: str, **files: str) -> Path:
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(textwrap.dedent(text))
    for name, body in files.items():
        (context / name).write_text(body)
    image = dockerfile.build(context, tmp_path / "out", None, lambda argv: argv, lambda line: None)
    return image.root


def test_a_relative_copy_lands_in_the_workdir_as_dockers_does(tmp_path):
    root = build(tmp_path, "FROM x\nWORKDIR /app\nCOPY job.py .\nCOPY job.py sub/\n", **{
        "job.py": "print('hi')\n"
    })  # fmt: skip
    assert (root / "app/job.py").read_text() == "print('hi')\n"
    assert (root / "app/sub/job.py").is_file()
    assert not (root / "job.py").exists()


def test_a_copy_never_climbs_out_of_the_image(tmp_path):
    root = build(tmp_path, "FROM x\nCOPY f /../../../../escaped/f\n", f="data")
    assert (root / "escaped/f").read_text() == "data", "'..' stops at the image's root"
    assert not (tmp_path / "escaped").exists() and not Path("/escaped").exists()


def test_a_copy_through_a_link_out_of_the_image_is_refused(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "conf").symlink_to(outside)  # what `RUN ln -s /etc /conf` would leave
    src = tmp_path / "f"
    src.write_text("data")
    with pytest.raises(dockerfile.BuildError, match="leads out of the image"):
        dockerfile.put(src, root / "conf" / "deep" / "f", root)
    assert list(outside.iterdir()) == [], "nothing was written through the link"


def tarball(*members: tarfile.TarInfo, data: bytes = b"x") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for m in members:
            if m.isfile():
                m.size = len(data)
                tar.addfile(m, io.BytesIO(data))
            else:
                tar.addfile(m)
    return buf.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.mark.parametrize(
    "bad",
    [
        member("../escaped"),
        member("/etc/escaped"),
        member("link", tarfile.SYMTYPE, "/etc"),
        member("sub/link", tarfile.SYMTYPE, "../../escaped"),
        member("hard", tarfile.LNKTYPE, "Dockerfile"),
        member("dev", tarfile.CHRTYPE),
    ],
    ids=["dotdot", "absolute", "absolute-link", "climbing-link", "hard-link", "device"],
)
def test_a_source_that_would_write_outside_its_directory_is_refused_whole(tmp_path, bad):
    where = tmp_path / "source"
    where.mkdir()
    with pytest.raises(tarfile.TarError):
        extract(tarball(member("Dockerfile"), bad), where)
    assert list(where.iterdir()) == [], "nothing of it was unpacked"
    assert not (tmp_path / "escaped").exists()


def test_a_source_with_files_dirs_and_inner_links_is_unpacked(tmp_path):
    where = tmp_path / "source"
    where.mkdir()
    extract(
        tarball(member("app", tarfile.DIRTYPE), member("app/main.py"),
                member("app/link.py", tarfile.SYMTYPE, "main.py")),
        where,
    )  # fmt: skip
    assert (where / "app/main.py").read_bytes() == b"x"
    assert (where / "app/link.py").is_symlink()
