"""A model's fingerprint is its files' content: one changed byte changes it, names,
mtimes, bookkeeping and hub commits do not, and a restart reads no weight bytes."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from pipeline.fingerprint import DigestCache, fingerprint_dir
from pipeline.tiny_model import ensure_tiny_model

WEIGHT = "transformer/extra.safetensors"  # over 1 MiB: old fingerprints took its size only
BIG = 16 << 20  # a weight large enough that reading it shows in the counts


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a 16 MiB weight file of random bytes in a component folder."""
    root = tmp_path_factory.mktemp("fingerprint")
    path = root / "model"
    shutil.copytree(ensure_tiny_model(root / "models"), path)
    (path / WEIGHT).write_bytes(os.urandom(BIG))
    return path


def bytes_read() -> int:
    """Bytes this process has read through read() and friends (Linux /proc/self/io)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def test_one_changed_weight_byte_of_the_same_size_changes_the_fingerprint(
    model: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "fine-tune"
    shutil.copytree(model, copy)
    assert fingerprint_dir(copy) == fingerprint_dir(model)
    weight = copy / WEIGHT
    data = bytearray(weight.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size, same name, same layout: another model
    weight.write_bytes(bytes(data))
    assert fingerprint_dir(copy) != fingerprint_dir(model)


def test_a_readme_a_cache_folder_or_touched_mtimes_keep_the_fingerprint(model: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(model, copy)
    digests = DigestCache(tmp_path / "digests.json")
    before = fingerprint_dir(copy, digests)
    (copy / "README.md").write_text("# a model card the pipeline never reads\n")
    (copy / ".cache" / "huggingface").mkdir(parents=True)
    (copy / ".cache" / "huggingface" / "x.metadata").write_text("commit\netag\n1712345678.9\n")
    for file in copy.rglob("*"):
        os.utime(file, ns=(1_000_000_000, 1_000_000_000))
    # Touched files are read again (their stamp changed), to the same digests.
    assert fingerprint_dir(copy, digests) == before == fingerprint_dir(model)


def test_a_restart_reads_no_weight_bytes(model: Path, tmp_path: Path) -> None:
    cache = tmp_path / "digests.json"
    started = bytes_read()
    first = fingerprint_dir(model, DigestCache(cache))
    assert bytes_read() - started >= BIG  # the first start reads every file once
    # A new process's view: a new DigestCache loaded from the file.
    started = bytes_read()
    again = fingerprint_dir(model, DigestCache(cache))
    read = bytes_read() - started
    assert again == first and read < BIG // 16, f"read {read} bytes"
    # A file replaced by another of the same size and mtime is a new inode: read again.
    weight = model / WEIGHT
    stat = weight.stat()
    replacement = weight.with_name("replacement")
    replacement.write_bytes(os.urandom(BIG))
    os.utime(replacement, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(replacement, weight)
    assert fingerprint_dir(model, DigestCache(cache)) != first


def hf_snapshot(cache: Path, model: Path, commit: str, readme: str) -> Path:
    """`model` laid out as the Hugging Face cache holds a download: each file a blob,
    LFS ones (weights) named by their SHA-256, and the snapshot's symlinks to them."""
    repo = cache / "models--Tongyi-MAI--Z-Image-Turbo"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    files = {p.relative_to(model).as_posix(): p.read_bytes() for p in model.rglob("*") if p.is_file()}
    for rel, data in {**files, "README.md": readme.encode()}.items():
        lfs = rel.endswith(".safetensors")
        # The hub names an LFS blob by its SHA-256, a small file's by its git SHA-1.
        name = (
            hashlib.sha256(data).hexdigest()
            if lfs
            else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        )
        (repo / "blobs" / name).write_bytes(data)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(repo / "blobs" / name, link.parent))
    return snapshot


def test_hf_cache_snapshots_are_fingerprinted_by_blob_names_without_reading_weights(
    model: Path, tmp_path: Path
) -> None:
    first = hf_snapshot(tmp_path / "hub", model, "a" * 40, "# card v1")
    # Another commit upstream that changed only the README: the same weights.
    second = hf_snapshot(tmp_path / "hub", model, "b" * 40, "# card v2, typo fixed")
    started = bytes_read()
    fingerprint = fingerprint_dir(first)
    assert bytes_read() - started < BIG // 16  # configs and tokenizer only: the weights are named
    assert fingerprint == fingerprint_dir(second) == fingerprint_dir(model)
