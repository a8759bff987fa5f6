"""What the project installs, and from where: floors above known-vulnerable releases, the image's
hashed lock agreeing with pyproject.toml, no package registry's host written anywhere, and the
Debian base image's mirror taken from the machine's apt sources. Offline: nothing is fetched."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.support import ROOT

LOCK = ROOT / "requirements" / "image.txt"
BASE_IMAGE_SCRIPT = ROOT / "scripts" / "debian-base-image.sh"

# (package, a release with the vulnerability, advisory): every requirement of the package that
# the project declares must exclude that release, and the image's lock must pin a later one.
VULNERABLE = [
    ("orjson", "3.9.14", "CVE-2024-27454: no recursion limit"),
    ("orjson", "3.11.5", "CVE-2025-67221: unbounded recursion on deeply nested JSON"),
    ("pillow", "10.0.0", "CVE-2023-4863: bundled libwebp heap overflow"),
    ("pillow", "12.2.0", "CVE-2026-55379 and the other advisories fixed in 12.3.0"),
    ("python-multipart", "0.0.17", "CVE-2024-53981: DoS on malformed boundaries"),
    ("python-multipart", "0.0.29", "CVE-2026-53539 (and CVE-2026-42561, CVE-2026-40347)"),
    ("torch", "2.5.1", "CVE-2025-32434: torch.load(weights_only=True) runs code"),
    ("torch", "2.9.1", "CVE-2026-24747: weights_only unpickler memory corruption"),
    ("torchvision", "0.24.1", "goes with torch < 2.10"),
    ("starlette", "0.49.0", "CVE-2025-62727: quadratic Range header parsing"),
    ("starlette", "1.0.0", "CVE-2026-48710: Host header poisons request.url.path"),
    ("h11", "0.15.0", "CVE-2025-43859: lenient chunked-encoding parsing (request smuggling)"),
    ("fastapi", "0.109.0", "CVE-2024-24762: form Content-Type ReDoS"),
    ("transformers", "5.2.0", "CVE-2026-4372: config.json runs hub code despite trust_remote_code"),
    ("jinja2", "3.1.5", "CVE-2025-27516: sandbox breakout through the attr filter"),
    ("scikit-learn", "1.4.2", "CVE-2024-5206: TfidfVectorizer keeps tokens it should drop"),
    ("setuptools", "78.1.0", "CVE-2025-47273: path traversal in PackageIndex"),
]


def declared_requirements() -> list[Requirement]:
    """Every requirement the project declares: runtime, each extra, the build system's, and
    requirements/build.in (what the image adds)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    project = pyproject["project"]
    texts = [*project["dependencies"], *pyproject["build-system"]["requires"]]
    for requirements in project["optional-dependencies"].values():
        texts += requirements
    texts += [line for line in (ROOT / "requirements" / "build.in").read_text().splitlines()
              if line.strip() and not line.lstrip().startswith("#")]
    return [r for r in map(Requirement, texts) if canonicalize_name(r.name) != "batchserve"]


def image_requirements() -> list[Requirement]:
    """What the image must satisfy: runtime and every extra but dev, and requirements/build.in."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    texts = list(pyproject["dependencies"])
    for extra, requirements in pyproject["optional-dependencies"].items():
        if extra != "dev":
            texts += requirements
    texts += [line for line in (ROOT / "requirements" / "build.in").read_text().splitlines()
              if line.strip() and not line.lstrip().startswith("#")]
    return [r for r in map(Requirement, texts) if canonicalize_name(r.name) != "batchserve"]


def lock_entries() -> Iterator[tuple[Requirement, list[str]]]:
    """(requirement, its hashes) for every entry of the lock, continuation lines joined."""
    text = re.sub(r"\\\n", " ", LOCK.read_text(encoding="utf-8"))
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        spec, *options = re.split(r"\s+(?=--)", line)
        yield Requirement(spec), [o.removeprefix("--hash=") for o in options]


def locked_versions() -> dict[str, Version]:
    versions: dict[str, Version] = {}
    for requirement, _ in lock_entries():
        [specifier] = requirement.specifier
        versions[canonicalize_name(requirement.name)] = Version(specifier.version)
    return versions


def test_every_lock_entry_is_one_exact_version_with_its_hashes() -> None:
    entries = list(lock_entries())
    assert len(entries) > 20  # torch and its dependencies at least
    for requirement, hashes in entries:
        [specifier] = requirement.specifier
        assert specifier.operator == "==", requirement
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), requirement


def test_the_lock_pins_every_image_requirement_at_a_version_it_allows() -> None:
    """Fails when pyproject.toml changes a requirement and the lock is not written again
    (scripts/lock-requirements.sh)."""
    versions = locked_versions()
    for requirement in image_requirements():
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        name = canonicalize_name(requirement.name)
        assert name in versions, f"{requirement} is not in {LOCK.name}: run scripts/lock-requirements.sh"
        assert requirement.specifier.contains(versions[name], prereleases=True), (
            f"{LOCK.name} pins {name}=={versions[name]}, outside {requirement}: "
            "run scripts/lock-requirements.sh")


@pytest.mark.parametrize(("name", "vulnerable", "advisory"), VULNERABLE,
                         ids=[f"{n}-{v}" for n, v, _ in VULNERABLE])
def test_floors_exclude_known_vulnerable_releases(name: str, vulnerable: str, advisory: str) -> None:
    declared = [r for r in declared_requirements() if canonicalize_name(r.name) == name]
    assert declared, f"{name} has no floor in pyproject.toml ({advisory})"
    for requirement in declared:
        assert not requirement.specifier.contains(vulnerable, prereleases=True), (
            f"{requirement} admits {name} {vulnerable}: {advisory}")
    assert locked_versions()[name] > Version(vulnerable), advisory


def test_the_image_installs_the_hashed_lock_and_nothing_else() -> None:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text(encoding="utf-8"))
    assert re.search(r"^ARG REQUIREMENTS=requirements/image\.txt$", text, re.MULTILINE)
    assert re.search(r"^ARG TORCH_INDEX_URL=$", text, re.MULTILINE)  # empty: pip's own index
    installs = re.findall(r"pip install [^&\n]*", text)
    assert installs
    for install in installs:
        # The lock, every file checked against its hash; or the server's own wheel, built in the
        # image from the context, without dependencies (the lock has them).
        assert ("--require-hashes -r requirements.txt" in install
                or ("--no-deps" in install and "/wheels/" in install)), install


# Written in parts so that this file does not name the hosts it looks for.
REGISTRY_HOST = re.compile(
    r"\b(?:[a-z0-9-]+\.)*(?:pypi|pythonhosted|pytorch|debian|ubuntu|anaconda|npmjs|huggingface)"
    r"\.(?:org|com|co|io|net)\b"
    r"|\b(?:registry-1|index|hub)\.docker\.(?:io|com)\b|\b(?:ghcr|quay|nvcr)\.io\b",
    re.IGNORECASE)
NOT_THE_PROJECT = {".git", ".venv", ".venv-kserve", "__pycache__", ".pytest_cache", ".mypy_cache",
                   ".ruff_cache", "artifacts", "results", "reports", "build",
                   "site"}  # the documentation site mkdocs builds (git-ignored): the theme's own files


def project_files() -> Iterator[Path]:
    for folder, folders, files in os.walk(ROOT):
        folders[:] = [f for f in folders if f not in NOT_THE_PROJECT and not f.endswith(".egg-info")
                      and not (Path(folder) / f).is_symlink()]
        yield from (Path(folder) / f for f in files)


def test_no_package_registry_host_is_written_in_the_project() -> None:
    """pip's default index needs no URL, and the Debian mirror comes from the machine's apt
    sources or an argument: a registry's host in a file is a fetch nobody chose."""
    found = []
    for path in project_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # not text
        for number, line in enumerate(text.splitlines(), 1):
            if match := REGISTRY_HOST.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {match.group(0)}")
    assert not found, "\n".join(found)
    assert REGISTRY_HOST.search("see https://" + ".".join(("download", "pytorch", "org")))  # it can fail


# -- scripts/debian-base-image.sh: its mirror from the machine's apt sources ---------------------


def mirrors(apt_etc: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """What the script would install from. Without debootstrap (in /usr/sbin) on PATH and with
    a Docker client that does nothing, so that a script that ignored the print switch could not
    build an image."""
    env = {**os.environ, "PATH": "/usr/bin:/bin", "DOCKER": "false", "APT_ETC": str(apt_etc),
           "DEBIAN_BASE_IMAGE_PRINT_MIRRORS": "1"}
    return subprocess.run(["bash", str(BASE_IMAGE_SCRIPT), "test-image", *args],
                          capture_output=True, text=True, timeout=30, env=env)


@pytest.fixture
def apt_etc(tmp_path: Path) -> Path:
    (tmp_path / "sources.list.d").mkdir()
    return tmp_path


def test_base_image_mirror_comes_from_deb822_sources(apt_etc: Path) -> None:
    (apt_etc / "sources.list.d" / "other.sources").write_text(
        "Types: deb\nURIs: http://vendor.example/apt\nSuites: stable\nComponents: main\n")
    (apt_etc / "sources.list.d" / "debian.sources").write_text(
        "Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n\n"
        "# a comment\nTypes: deb\nURIs: http://off.example/debian\nSuites: bookworm\nEnabled: no\n\n"
        "Types: deb deb-src\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\n"
        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "types: deb\nuris: http://security.example/debian-security\nsuites: bookworm-security\n")
    result = mirrors(apt_etc)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["http://mirror.example/debian", "http://security.example/debian-security"]


def test_base_image_mirror_comes_from_one_line_sources(apt_etc: Path) -> None:
    (apt_etc / "sources.list").write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb-src http://src.example/debian bookworm main\n"
        "deb [ arch=amd64 signed-by=/usr/share/keyrings/debian.gpg ] http://mirror.example/debian"
        " bookworm main\n")
    result = mirrors(apt_etc)
    assert result.returncode == 0, result.stderr
    # No bookworm-security source: the mirror's sibling folder.
    assert result.stdout.split() == ["http://mirror.example/debian", "http://mirror.example/debian-security"]


def test_base_image_mirror_argument_wins_and_no_source_is_an_error(apt_etc: Path) -> None:
    (apt_etc / "sources.list").write_text("deb http://other.example/debian trixie main\n")
    result = mirrors(apt_etc)
    assert result.returncode == 1 and "no apt source of this machine serves bookworm" in result.stderr
    result = mirrors(apt_etc, "http://given.example/debian")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["http://given.example/debian", "http://given.example/debian-security"]
