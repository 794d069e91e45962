"""``load_bundle(verify=True)`` checks every file the manifest lists, on the shipped bundles.

The cases are read from the manifests themselves, so a file added to a bundle is covered
without touching this test.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest

from hitstream.bundle import MANIFEST, MODEL_FILE, load_bundle
from hitstream.errors import BundleError

MODELS = Path(__file__).resolve().parent.parent / "models"
BUNDLES = sorted(p.parent.name for p in MODELS.glob("*/manifest.json"))


def listed(bundle: str) -> list[str]:
    return sorted(json.loads((MODELS / bundle / MANIFEST).read_text())["files"])


CASES = [pytest.param(b, f, id=f"{b}/{f}") for b in BUNDLES for f in listed(b)]


def copy_bundle(bundle: str, tmp_path: Path) -> Path:
    dst = tmp_path / "models" / bundle
    shutil.copytree(MODELS / bundle, dst)
    load_bundle(dst)  # the pristine copy verifies: what breaks it below is the one change
    return dst


def rewrite_manifest(root: Path, edit) -> None:
    manifest = json.loads((root / MANIFEST).read_text())
    edit(manifest)
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2))


def test_the_shipped_bundles_are_covered() -> None:
    """Both shipped bundles are found, and each manifest lists every file of its bundle
    (a file left out of ``files`` would never be hashed)."""
    assert {"default", "fast"} <= set(BUNDLES)
    assert "templates.h5" in listed("default")
    for b in BUNDLES:
        present = sorted(
            p.relative_to(MODELS / b).as_posix()
            for p in (MODELS / b).rglob("*")
            if p.is_file() and p.name != MANIFEST
        )
        assert listed(b) == present, b
        assert MODEL_FILE in listed(b)


@pytest.mark.parametrize(("bundle", "name"), CASES)
def test_one_flipped_byte_in_any_listed_file_is_refused(
    bundle: str, name: str, tmp_path: Path
) -> None:
    root = copy_bundle(bundle, tmp_path)
    path = root / name
    data = bytearray(path.read_bytes())
    assert data, f"{name} is empty"
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=rf"{re.escape(name)} is corrupted"):
        load_bundle(root)
    load_bundle(root, verify=False)  # the hashes are what refused it
    # the same change, recorded in the manifest (as the trainer would), is accepted
    digest = hashlib.sha256(bytes(data)).hexdigest()
    rewrite_manifest(root, lambda m: m["files"].__setitem__(name, digest))
    load_bundle(root)


@pytest.mark.parametrize(("bundle", "name"), CASES)
def test_a_listed_file_that_is_missing_is_refused(bundle: str, name: str, tmp_path: Path) -> None:
    root = copy_bundle(bundle, tmp_path)
    (root / name).unlink()
    with pytest.raises(BundleError, match=rf"is missing {re.escape(name)}$"):
        load_bundle(root)


@pytest.mark.parametrize("bundle", BUNDLES)
@pytest.mark.parametrize("entry", ["../x", "../../x", "sub/../../x", "ABS"])
def test_an_entry_outside_the_bundle_is_refused(bundle: str, entry: str, tmp_path: Path) -> None:
    """The outside file exists and its hash matches: only its place can refuse it."""
    root = copy_bundle(bundle, tmp_path)
    target = (root / entry).resolve() if entry != "ABS" else tmp_path / "x"
    if entry == "ABS":
        entry = str(target)
    target.write_bytes(b"not part of the bundle")
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    rewrite_manifest(root, lambda m: m["files"].__setitem__(entry, digest))
    with pytest.raises(BundleError, match=rf"{re.escape(repr(entry))} points outside the bundle"):
        load_bundle(root)
    load_bundle(root, verify=False)  # the manifest itself is fine


@pytest.mark.parametrize("bundle", BUNDLES)
def test_a_listed_symlink_leading_out_of_the_bundle_is_refused(bundle: str, tmp_path: Path) -> None:
    """``evaluation.json`` replaced by a link to an identical copy outside the bundle: same
    bytes, same hash, but not the bundle's file."""
    root = copy_bundle(bundle, tmp_path)
    outside = tmp_path / "elsewhere.json"
    shutil.copyfile(root / "evaluation.json", outside)
    (root / "evaluation.json").unlink()
    (root / "evaluation.json").symlink_to(outside)
    with pytest.raises(BundleError, match=re.escape("'evaluation.json' points outside the bundle")):
        load_bundle(root)
