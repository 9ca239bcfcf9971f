"""Settings: flags, environment, errors at start-up, and README documenting every one."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from runtime import quiet_logs
from runtime.settings import Settings, load_settings
from tests.conftest import Server

ROOT = Path(__file__).resolve().parent.parent


def test_flags_override_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ZIMAGE_PORT", "8000")
    monkeypatch.setenv("ZIMAGE_MEMORY_CACHE_MB", "64")
    settings = load_settings(["--port", "9000", "--cache-dir", str(tmp_path)])
    assert settings.port == 9000
    assert settings.memory_cache_mb == 64
    assert settings.cache_dir == tmp_path


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--port", "0"], {}, "--port (ZIMAGE_PORT)"),
        ([], {"ZIMAGE_MEMORY_CACHE_MB": "lots"}, "--memory-cache-mb (ZIMAGE_MEMORY_CACHE_MB)"),
        (["--model", "/no/such/dir"], {}, "--model (ZIMAGE_MODEL)"),
        (["--prompt-normalization", "loud"], {}, "--prompt-normalization"),
        (["--attention-backend", "flash4"], {}, "--attention-backend (ZIMAGE_ATTENTION_BACKEND)"),
        ([], {"ZIMAGE_COMPILE": "yes"}, "--compile (ZIMAGE_COMPILE)"),
        (["--cache-dir", "/proc/forbidden"], {}, "--cache-dir (ZIMAGE_CACHE_DIR)"),
        (["--cors-origins", "https://chat.example.com/app"], {}, "--cors-origins (ZIMAGE_CORS_ORIGINS)"),
        (["--public-url", "images.example.com"], {}, "--public-url (ZIMAGE_PUBLIC_URL)"),
        ([], {"ZIMAGE_PUBLIC_URL": "https://images.example.com/?a=1"}, "--public-url (ZIMAGE_PUBLIC_URL)"),
        ([], {"ZIMAGE_CACHE_SECRET": "short"}, "--cache-secret (ZIMAGE_CACHE_SECRET): the secret is 5 bytes"),
        (
            ["--cache-secret", f"{'n' * 32},{'o' * 20}"],
            {},
            "--cache-secret (ZIMAGE_CACHE_SECRET): secret 2 of 2",
        ),
    ],
)
def test_bad_settings_fail_at_start_naming_the_setting(
    args: list[str], env: dict[str, str], named: str
) -> None:
    proc = subprocess.run(
        [sys.executable, "app.py", *args],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert named in proc.stderr


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    table = {
        m.group(1): m.group(2)
        for m in re.finditer(r"^\| `(--[a-z-]+)` \| `(ZIMAGE_[A-Z_]+)` \|", readme, re.M)
    }
    for name in Settings.model_fields:
        flag, env = "--" + name.replace("_", "-"), "ZIMAGE_" + name.upper()
        assert table.get(flag) == env, f"README's settings table lacks {flag} / {env}"


def test_readme_settings_table_is_written_from_the_settings() -> None:
    """Flags, variables, defaults and meanings: README.md's table is exactly what
    `python -m runtime.settings_table` writes from runtime/settings.py."""
    from runtime.settings_table import table, with_table

    readme = (ROOT / "README.md").read_text()
    assert with_table(readme) == readme, "README's settings table is stale: python -m runtime.settings_table"
    assert "| `--disk-cache-size` | `ZIMAGE_DISK_CACHE_SIZE` | `20GiB` |" in table()
    assert "| `--redis-url` | `ZIMAGE_REDIS_URL` | unset |" in table()


def test_help_names_what_each_setting_takes() -> None:
    proc = subprocess.run(
        [sys.executable, "app.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    usage = " ".join(proc.stdout.split())  # argparse wraps lines where it likes
    for flag, metavar in (
        ("--disk-cache-size", "SIZE"),
        ("--disk-cache-max-age", "DURATION"),
        ("--redis-ttl", "DURATION"),
        ("--shutdown-timeout", "DURATION"),
        ("--redis-url", "str"),
        ("--api-keys", "Path"),
    ):
        assert f"[{flag} {metavar}]" in usage, flag
    assert "{str,null}" not in usage and "null}" not in usage
    assert "(default: 20GiB)" in usage and "(default: 7d)" in usage


def test_sizes_and_durations_still_parse_from_flags_and_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ZIMAGE_DISK_CACHE_MAX_AGE", "12h")
    settings = load_settings(["--disk-cache-size", "500MB", "--cache-dir", str(tmp_path)])
    assert settings.disk_cache_size == 500_000_000
    assert settings.disk_cache_max_age == 12 * 3600


def test_start_up_shows_no_torchao_or_pytree_warnings(server: Server) -> None:
    start = server.log_path.read_text(errors="replace")
    assert "model loaded" in start  # (the start-up is in it)
    for noise in ("torchao", "_pytree", "triton"):
        assert noise not in start


def test_only_the_known_warnings_are_lowered(caplog: pytest.LogCaptureFixture) -> None:
    quiet_logs.install()
    quiet_logs.install()  # once is enough: no second filter
    assert len([f for f in logging.getLogger("torchao").filters if isinstance(f, quiet_logs.Lowered)]) == 1
    with caplog.at_level(logging.INFO):
        torchao = logging.getLogger("torchao")
        torchao.warning("Failed to load /x/torchao/_C_mxfp8.cpython-310-x86_64-linux-gnu.so: no")
        torchao.warning("Failed to load the configuration")  # another warning: shown
        logging.getLogger("torchao.kernel.intmm").warning("Warning: Detected no triton, on systems ...")
    assert [r.getMessage() for r in caplog.records] == ["Failed to load the configuration"]
    with caplog.at_level(logging.DEBUG):  # --log-level debug shows them, as DEBUG
        logging.getLogger("torchao.kernel.intmm").warning("Warning: Detected no triton, on systems ...")
    assert caplog.records[-1].levelname == "DEBUG"
