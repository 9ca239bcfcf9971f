"""Which model is served and from which files: the fingerprint ignores download
bookkeeping, a hub download fetches only what the pipeline reads, and `--model auto`
refuses to serve noise on a machine with an NVIDIA driver that torch cannot use."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline import loading
from pipeline.fingerprint import fingerprint_dir
from pipeline.loading import (
    CudaUnavailable,
    download,
    is_demo_spec,
    resolve_model,
)
from pipeline.tiny_model import ensure_tiny_model

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_tiny_model(tmp_path_factory.mktemp("models"))


def test_the_fingerprint_ignores_what_hf_download_local_dir_writes_beside_the_model(
    tiny: Path, tmp_path: Path
) -> None:
    from huggingface_hub._local_folder import write_download_metadata

    model = tmp_path / "Z-Image-Turbo"
    shutil.copytree(tiny, model)
    before = fingerprint_dir(model)
    # What `hf download REPO --local-dir DIR` leaves: .cache/huggingface/{.gitignore,
    # CACHEDIR.TAG, download/<file>.metadata (commit, etag, a timestamp), *.lock}.
    files = [p.relative_to(model).as_posix() for p in model.rglob("*") if p.is_file()]
    for name in files:
        write_download_metadata(model, name, COMMIT, etag=f"etag-{name}")
    bookkeeping = [p for p in (model / ".cache").rglob("*") if p.is_file()]
    assert any(p.name.endswith(".metadata") for p in bookkeeping) and len(bookkeeping) > len(files)
    (model / "transformer" / "diffusion_pytorch_model.safetensors.lock").touch()
    (model / "README.md").write_text("# Z-Image-Turbo\nnot read by the pipeline\n")
    (model / "assets").mkdir()
    (model / "assets" / "showcase.jpg").write_bytes(b"\xff\xd8" + bytes(2048))
    assert fingerprint_dir(model) == before

    # Downloading again rewrites every timestamp: still the same model.
    for name in files:
        write_download_metadata(model, name, COMMIT, etag=f"etag-{name}")
    assert fingerprint_dir(model) == before

    # What the pipeline reads does count.
    config = model / "scheduler" / "scheduler_config.json"
    config.write_text(config.read_text().replace("{", '{"shift": 3.1, ', 1))
    assert fingerprint_dir(model) != before


class FakeHub:
    """The hub's two download calls served from a local repository, with the file
    filtering of huggingface_hub itself (filter_repo_objects)."""

    def __init__(self, repo: Path, cache: Path) -> None:
        self.repo, self.snapshot = repo, cache / "snapshots" / COMMIT
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def files(self) -> list[str]:
        return sorted(p.relative_to(self.repo).as_posix() for p in self.repo.rglob("*") if p.is_file())

    def fetch(self, names: list[str]) -> None:
        for name in names:
            (self.snapshot / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(self.repo / name, self.snapshot / name)

    def hf_hub_download(self, repo_id: str, filename: str, **kwargs: Any) -> str:
        self.calls.append(("hf_hub_download", {"repo_id": repo_id, "filename": filename, **kwargs}))
        self.fetch([filename])
        return str(self.snapshot / filename)

    def snapshot_download(self, repo_id: str, **kwargs: Any) -> str:
        from huggingface_hub.utils import filter_repo_objects

        self.calls.append(("snapshot_download", {"repo_id": repo_id, **kwargs}))
        allow, ignore = kwargs.get("allow_patterns"), kwargs.get("ignore_patterns")
        self.fetch(list(filter_repo_objects(self.files(), allow_patterns=allow, ignore_patterns=ignore)))
        return str(self.snapshot)


def test_a_hub_download_fetches_only_the_files_the_pipeline_reads(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    repo = tmp_path / "repo"
    shutil.copytree(tiny, repo)
    needed = sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file())
    # What a hub repository holds besides: a README, showcase images, other weight formats.
    (repo / "README.md").write_text("# model card")
    (repo / ".gitattributes").write_text("*.safetensors filter=lfs")
    (repo / "assets").mkdir()
    (repo / "assets" / "showcase.png").write_bytes(bytes(4096))
    (repo / "transformer" / "diffusion_pytorch_model.bin").write_bytes(bytes(4096))
    (repo / "text_encoder" / "model.gguf").write_bytes(bytes(4096))
    hub = FakeHub(repo, tmp_path / "hf-cache")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub.hf_hub_download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub.snapshot_download)

    path = download("Tongyi-MAI/Z-Image-Turbo")

    assert sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()) == needed
    (first, index_call), (second, snapshot_call) = hub.calls
    assert (first, index_call["filename"]) == ("hf_hub_download", "model_index.json")
    assert second == "snapshot_download" and snapshot_call["revision"] == COMMIT
    assert snapshot_call["allow_patterns"] == [
        "model_index.json",
        "scheduler/*",
        "text_encoder/*",
        "tokenizer/*",
        "transformer/*",
        "vae/*",
    ]
    # And it loads: the hub id's identity points at the snapshot, and its fingerprint is
    # its files' content, the same as any copy's, not its commit.
    identity = resolve_model("Tongyi-MAI/Z-Image-Turbo", tmp_path / "models")
    assert identity.path == path and identity.fingerprint == fingerprint_dir(tiny)


@pytest.fixture
def nvidia_driver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    sign = tmp_path / "proc-driver-nvidia-version"
    sign.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  570.86.15\n")
    monkeypatch.setattr(loading, "NVIDIA_DRIVER_FILES", (sign,))
    return sign


def test_auto_with_an_nvidia_driver_and_a_cpu_only_torch_refuses_to_serve_noise(
    nvidia_driver: Path, tmp_path: Path
) -> None:
    assert torch.version.cuda is None  # this machine's torch: the case itself
    with pytest.raises(CudaUnavailable) as failed:
        resolve_model("auto", tmp_path / "models")
    message = str(failed.value)
    assert str(nvidia_driver) in message and f"torch {torch.__version__} is a CPU-only build" in message
    assert "install a CUDA build of torch" in message and "--model tiny" in message
    assert not is_demo_spec("auto")  # so the UI shows the failure, not the demo banner
    # Asking for the demo model still works.
    assert resolve_model("tiny", tmp_path / "models").demo and is_demo_spec("tiny")


def test_a_cuda_torch_that_finds_no_gpu_says_so(
    nvidia_driver: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    with pytest.raises(
        CudaUnavailable, match=r"\(CUDA 12.8\) finds no usable GPU, .*; check CUDA_VISIBLE_DEVICES"
    ):
        resolve_model("auto", tmp_path / "models")


def test_without_a_driver_auto_serves_the_demo_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loading, "NVIDIA_DRIVER_FILES", (tmp_path / "absent",))
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert resolve_model("auto", tmp_path / "models").demo and is_demo_spec("auto")


@pytest.mark.parametrize(
    ("card", "capability", "refused"),
    [
        ("Tesla T4", (7, 5), True),
        ("Tesla V100-SXM2-16GB", (7, 0), True),
        ("NVIDIA A10G", (8, 6), False),
        ("NVIDIA H100 80GB HBM3", (9, 0), False),
    ],
)
def test_a_gpu_without_native_bfloat16_is_refused_naming_the_card_and_what_to_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, card: str, capability: tuple[int, int], refused: bool
) -> None:
    from pipeline.engine import Engine, EngineState

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: card)
    # (an A10G's 24 GB, free: the plan, which decides the text encoder's dtype, reads it)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (22 << 30, 24 << 30))
    if not refused:  # the demo model on a mocked GPU: the check passes, the plan goes on
        identity = resolve_model("tiny", tmp_path / "models")
        assert (identity.device, identity.dtype) == ("cuda", "bfloat16")
        return
    expected = rf"{card} \(compute capability {capability[0]}.{capability[1]}\) has no native bfloat16"
    with pytest.raises(ValueError, match=expected) as failed:
        resolve_model("tiny", tmp_path / "models")
    assert "compute capability 8.0 or newer (A10, A100" in str(failed.value)
    # The engine fails at start with that reason (what /ready shows), never runs unplanned.
    engine = Engine("tiny", tmp_path / "models")
    engine.start()
    assert engine.wait_settled(60) == EngineState.FAILED
    assert card in (engine.error or "") and "no native bfloat16" in (engine.error or "")
    engine.close(10)
