"""scripts/setup-containers bootstraps its base image from the mirror this machine's apt uses."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "setup-containers"
FALLBACK = "http://deb.debian.org/debian"


def mirror(root: Path, suite: str = "bookworm") -> str:
    """apt_mirror run alone, as the script's header says, over a machine whose / is `root`."""
    done = subprocess.run(
        ["bash", "-c", f'source "{SCRIPT}"; apt_mirror "$1" "$2"', "apt_mirror", suite, str(root)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert done.stderr == ""
    return done.stdout.strip()


def machine(tmp_path: Path, files: dict[str, str], os_id: str = "debian") -> Path:
    for name, text in files.items():
        path = tmp_path / "etc" / "apt" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (tmp_path / "etc").mkdir(exist_ok=True)
    (tmp_path / "etc" / "os-release").write_text(f'PRETTY_NAME="test"\nID={os_id}\n')
    return tmp_path


def test_one_line_sources_with_options_and_comments(tmp_path: Path) -> None:
    root = machine(
        tmp_path,
        {
            "sources.list": "# deb http://commented.example/debian bookworm main\n"
            "deb-src http://src.example/debian bookworm main\n"
            "deb http://mirror.local/debian-security bookworm-security main\n"
            "deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] http://mirror.local/debian/ bookworm main contrib\n"
        },
    )
    assert mirror(root) == "http://mirror.local/debian"


def test_deb822_sources_skip_disabled_stanzas_and_read_every_uri(tmp_path: Path) -> None:
    root = machine(
        tmp_path,
        {
            "sources.list.d/other.list": "deb http://apt.example/tools stable main\n",
            "sources.list.d/debian.sources": "Types: deb\n"
            "URIs: http://off.example/debian\n"
            "Suites: bookworm\n"
            "Components: main\n"
            "Enabled: no\n"
            "\n"
            "# the local mirror\n"
            "Types: deb deb-src\n"
            "URIs: http://cache.lan:3142/debian\n"
            "  http://second.lan/debian\n"
            "Suites: bookworm bookworm-updates\n"
            "Components: main non-free-firmware\n"
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
        },
    )
    assert mirror(root) == "http://cache.lan:3142/debian"


def test_a_debian_machine_of_another_release_lends_its_mirror(tmp_path: Path) -> None:
    sources = "Types: deb\nURIs: http://mirror.lan/debian\nSuites: trixie trixie-updates\nComponents: main\n"
    assert mirror(machine(tmp_path, {"sources.list.d/debian.sources": sources})) == "http://mirror.lan/debian"


@pytest.mark.parametrize(
    ("files", "os_id"),
    [
        ({}, "debian"),
        ({"sources.list": "deb http://archive.ubuntu.com/ubuntu jammy main restricted\n"}, "ubuntu"),
        ({"sources.list": "deb cdrom:[Debian 12]/ bookworm main\n"}, "debian"),
        ({"sources.list": "deb http://mirror.lan/debian bookworm contrib\n"}, "debian"),
    ],
)
def test_without_a_usable_source_the_public_mirror(tmp_path: Path, files: dict[str, str], os_id: str) -> None:
    assert mirror(machine(tmp_path, files, os_id)) == FALLBACK


def test_this_machine_has_a_mirror() -> None:
    assert mirror(Path("/")).startswith(("http://", "https://", "file:/"))
