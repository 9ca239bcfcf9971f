"""The deployment files as shipped, run for real: deploy/supervisor under a real
supervisord, scripts/health-check.sh against it, and the cron line of deploy/cron."""

from __future__ import annotations

import getpass
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bench.procs import NotReady, wait_until
from cache import DiskTier, Entry
from tests.conftest import ROOT, free_port, wait_generating

BIN = Path(sys.executable).parent  # supervisord and supervisorctl come with the test extra
PROGRAM = "z-image-turbo"
HEALTH_CHECK = ROOT / "scripts" / "health-check.sh"


def shipped(path: str, replacements: dict[str, str]) -> str:
    """A file from deploy/ with its paths replaced; fails if one is not there to replace."""
    text = (ROOT / path).read_text()
    for old, new in replacements.items():
        assert old in text, f"{path} no longer contains {old!r}"
        text = text.replace(old, new)
    return text


def set_env(text: str, **values: str) -> str:
    for name, value in values.items():
        line = f"{name}={value}"
        text, n = re.subn(rf"^#?\s*{name}=.*$", line, text, flags=re.M)
        if not n:
            text += f"\n{line}\n"
    return text


@dataclass
class Supervised:
    dir: Path
    conf: Path
    url: str
    cache: Path
    proc: subprocess.Popen[bytes]

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "supervisorctl"), "-c", str(self.conf), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def pid(self) -> int:
        return int(self.ctl("pid", PROGRAM).stdout.strip() or 0)

    def wait_running(self, timeout: float = 150, state: str = "RUNNING") -> None:
        try:
            wait_until(
                lambda: (
                    state in self.ctl("status", PROGRAM).stdout
                    and httpx.get(f"{self.url}/ready", timeout=5).status_code == 200
                ),
                "the supervised service",
                timeout_s=timeout,
                interval_s=0.5,
                retry_on=(httpx.TransportError,),
            )
        except NotReady:
            raise AssertionError(
                f"not running and ready:\n{self.ctl('status').stdout}\n{self.app_log()}"
            ) from None

    def app_log(self) -> str:
        return (self.dir / "log" / "app.log").read_text(errors="replace")[-4000:]

    def supervisor_log(self) -> str:
        return (self.dir / "supervisord.log").read_text(errors="replace")

    def health_check(self, *args: str) -> subprocess.CompletedProcess[str]:
        # supervisorctl finds ./supervisord.conf, as it finds /etc/supervisor/... on a server.
        env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
        return subprocess.run(
            [str(HEALTH_CHECK), *args, self.url],
            cwd=self.dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )


@pytest.fixture(scope="module")
def supervised(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Supervised]:
    yield from supervise(tmp_path_factory, startsecs=3)


def supervise(tmp_path_factory: pytest.TempPathFactory, startsecs: int) -> Iterator[Supervised]:
    """supervisord running the shipped program (startsecs as given), once it is ready."""
    base = tmp_path_factory.mktemp("supervisor")
    for sub in ("log", "etc", "conf.d", "home"):
        (base / sub).mkdir()
    port = free_port()
    env_file = base / "etc" / "z-image-turbo.env"
    env_file.write_text(
        set_env(
            (ROOT / "deploy" / "z-image-turbo.env").read_text(),
            ZIMAGE_HOST="127.0.0.1",
            ZIMAGE_PORT=str(port),
            ZIMAGE_MODEL="tiny",
            ZIMAGE_CACHE_DIR=str(base / "cache"),
            ZIMAGE_MEMORY_CACHE_MB="64",
            ZIMAGE_WARMUP_SIZES="256x256",
        )
    )
    # The program as shipped, but with this checkout, this user and a test's start time.
    (base / "conf.d" / "z-image-turbo.conf").write_text(
        shipped(
            "deploy/supervisor/z-image-turbo.conf",
            {
                "/etc/z-image-turbo/z-image-turbo.env": str(env_file),
                "/opt/z-image-turbo": str(ROOT),
                "/var/log/z-image-turbo": str(base / "log"),
                "/var/lib/z-image-turbo": str(base / "home"),
                "user=zimage": f"user={getpass.getuser()}",
                "startsecs=60": f"startsecs={startsecs}",
            },
        )
    )
    conf = base / "supervisord.conf"
    conf.write_text(
        f"""[unix_http_server]
file={base}/supervisor.sock

[supervisord]
logfile={base}/supervisord.log
pidfile={base}/supervisord.pid
childlogdir={base}/log

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{base}/supervisor.sock

[include]
files = {base}/conf.d/*.conf
"""
    )
    proc = subprocess.Popen(
        [str(BIN / "supervisord"), "-n", "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    sup = Supervised(base, conf, f"http://127.0.0.1:{port}", base / "cache", proc)
    try:
        sup.wait_running(state="RUNNING" if startsecs < 60 else "STARTING")
        yield sup
    finally:
        sup.ctl("shutdown")
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_the_program_runs_the_app_as_the_configured_non_root_user(supervised: Supervised) -> None:
    program = (ROOT / "deploy/supervisor/z-image-turbo.conf").read_text()
    assert re.search(r"^user=zimage$", program, re.M)  # never root
    for setting in ("autostart=true", "autorestart=true", "stopsignal=TERM", "stopwaitsecs=90"):
        assert re.search(rf"^{setting}$", program, re.M), setting
    pid = supervised.pid()
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[1].endswith(b"app.py")  # `exec` left Python as the process Supervisor signals
    env = dict(
        item.split(b"=", 1) for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in item
    )
    assert env[b"ZIMAGE_MODEL"] == b"tiny"  # settings from the environment file


def test_health_check_passes_against_a_healthy_service(supervised: Supervised) -> None:
    result = supervised.health_check("--timeout", "120")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert re.search(r"^ok\s+supervisor\s+z-image-turbo\s+RUNNING", out, re.M), out
    assert re.search(r"^ok\s+health\s+model ready, device cpu, [0-9.]+ ms$", out, re.M), out
    assert re.search(r"^ok\s+ready\s", out, re.M), out
    assert re.search(
        r"^ok\s+cache-hit\s+memory hit: [0-9.]+ ms in the server, [0-9.]+ ms in all$", out, re.M
    ), out
    assert out.rstrip().endswith("PASS: all checks passed")
    assert len(out.splitlines()) <= 24  # one screen


@pytest.mark.parametrize("option", ["--timeout", "--token", "--program"])
def test_health_check_option_without_its_value_exits_2_at_once(option: str) -> None:
    # Given last with no value, `shift 2` used to fail and the loop never ended.
    for args in ([option], ["http://127.0.0.1:9", option]):
        result = subprocess.run(
            ["bash", str(HEALTH_CHECK), *args], capture_output=True, text=True, timeout=20
        )
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert f"health-check: {option} needs a value" in result.stderr


def test_health_check_passes_while_supervisor_says_starting_once_the_service_is_ready(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # The shipped startsecs=60 keeps the program STARTING for a minute after /ready is 200.
    starting = supervise(tmp_path_factory, startsecs=600)
    sup = next(starting)
    try:
        result = sup.health_check("--timeout", "120")
        assert result.returncode == 0, result.stdout + result.stderr
        assert re.search(r"^ok\s+supervisor\s+z-image-turbo\s+STARTING, service ready$", result.stdout, re.M)
    finally:
        starting.close()


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--timeout", "0"], "from 1 to 3600, got '0'"),  # curl's 0 is no limit: it hung
        (["--timeout", "99999999999999999999"], "from 1 to 3600"),  # passed, then every curl failed
        (["--timeout=3601"], "from 1 to 3600"),
        (["http://127.0.0.1:9", "http://127.0.0.1:10"], "one URL only"),  # the last won silently
        (["not a url"], "the URL must be http://"),
        (["ftp://127.0.0.1:9"], "the URL must be http://"),
    ],
)
def test_health_check_refuses_bad_arguments_with_status_2(args: list[str], said: str) -> None:
    result = subprocess.run(["bash", str(HEALTH_CHECK), *args], capture_output=True, text=True, timeout=20)
    assert result.returncode == 2 and said in result.stderr, (result.stdout, result.stderr)
    assert result.stdout == ""  # refused before any check


def test_health_check_help_is_the_usage_without_code() -> None:
    result = subprocess.run(["bash", str(HEALTH_CHECK), "-h"], capture_output=True, text=True, timeout=20)
    assert result.returncode == 0 and result.stdout.lstrip().startswith("scripts/health-check.sh [--timeout")
    assert "set -u" not in result.stdout and "ZIMAGE_HEALTH_TOKEN" in result.stdout


def test_sigterm_from_supervisor_stops_cleanly_and_a_restart_keeps_the_cache(supervised: Supervised) -> None:
    slow = {"prompt": "a slow generation", "width": 1024, "height": 1024, "steps": 12}
    out: list[httpx.Response] = []

    with httpx.Client(base_url=supervised.url, timeout=10) as status:
        before = status.get("/api/cache/stats").json()["generations"]
        thread = threading.Thread(
            target=lambda: out.append(httpx.get(f"{supervised.url}/run", params=slow, timeout=120))
        )
        thread.start()
        # Submitted to the engine (counted) and out of its queue: the model is on it, for
        # the seconds this 1024x1024 generation takes, so the stop finds it in flight.
        wait_generating(status, before, "the generation to start", timeout_s=60)
    stopped = supervised.ctl("stop", PROGRAM)
    assert "stopped" in stopped.stdout, stopped.stdout + stopped.stderr
    thread.join(10)
    assert out and out[0].status_code == 200 and out[0].json()["cache"] == "miss"
    assert re.search(rf"stopped: {PROGRAM} \(exit status 0\)", supervised.supervisor_log())
    assert [p for p in supervised.cache.rglob("*") if p.name.endswith(".tmp")] == []

    down = supervised.health_check("--timeout", "5")
    assert down.returncode == 1
    assert re.search(r"^FAIL\s+supervisor\s+z-image-turbo\s+STOPPED", down.stdout, re.M), down.stdout
    assert re.search(
        r"^FAIL\s+health\s+no answer from http://127.0.0.1:\d+ \(Failed to connect", down.stdout, re.M
    ), down.stdout
    assert "FAIL: 5 check(s) failed" in down.stdout

    assert "started" in supervised.ctl("start", PROGRAM).stdout
    supervised.wait_running()
    again = httpx.get(f"{supervised.url}/run", params=slow, timeout=120).json()
    assert again["cache"] == "disk" and again["key"] == out[0].json()["key"]


def test_supervisor_restarts_a_killed_process(supervised: Supervised) -> None:
    before = supervised.pid()
    params = {"prompt": "survives a crash", "width": 256, "height": 256}
    stored = httpx.get(f"{supervised.url}/run", params=params, timeout=60).json()
    os.kill(before, signal.SIGKILL)
    wait_until(
        lambda: supervised.pid() not in (0, before), "Supervisor's restart", timeout_s=30, interval_s=0.2
    )
    supervised.wait_running()
    assert re.search(
        rf"exited: {PROGRAM} \(terminated by SIGKILL; not expected\)", supervised.supervisor_log()
    )
    after = httpx.get(f"{supervised.url}/run", params=params, timeout=60).json()
    assert after["cache"] == "disk" and after["key"] == stored["key"]


def test_the_cron_line_prunes_old_entries_and_logs(tmp_path: Path) -> None:
    cron = (ROOT / "deploy" / "cron" / "z-image-turbo").read_text()
    (job,) = [
        line
        for line in cron.splitlines()
        if line.strip() and not line.startswith("#") and "=" not in line[:12]
    ]
    minute, hour, dom, month, dow, user, command = job.split(None, 6)
    assert (minute, hour, dom, month, dow, user) == ("0", "3", "*", "*", "*", "zimage")
    assert "-m cache prune" in command and "--max-age 7d" in command and "--max-size 20GiB" in command

    cache, logs = tmp_path / "cache", tmp_path / "log"
    logs.mkdir()
    disk = DiskTier(cache / "images")
    old = time.time() - 8 * 86400
    for i in range(3):
        key = f"{i:064x}"
        disk.put("public", key, Entry(data=b"x" * 1000, ext="png", meta={}))
        if i < 2:
            os.utime(disk.path_for("public", key), (old, old))
    command = (
        command.replace("/opt/z-image-turbo", str(ROOT))
        .replace("/var/lib/z-image-turbo", str(cache))
        .replace("/var/log/z-image-turbo", str(logs))
    )
    env_lines = dict(line.split("=", 1) for line in cron.splitlines() if re.match(r"^[A-Z]+=", line))
    result = subprocess.run(
        [env_lines.get("SHELL", "/bin/sh"), "-c", command], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    log = (logs / "prune.log").read_text()
    assert re.match(r"^\d{4}-\d\d-\d\dT", log)  # a timestamp first
    assert "removed 2 expired and 0 over-size entries" in log and "1 entries" in log
    assert len([p for p in (cache / "images").rglob("*") if p.is_file()]) == 1
