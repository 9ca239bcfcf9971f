"""A real nginx on loopback running the shipped deploy/nginx/z-image-turbo.conf, for the tests.

The site file is used as shipped except for what names this machine: the
replicas in each upstream (the template's parameters kept), the listen address
and the cache directory. nginx runs in the foreground (`daemon off`) with its
prefix, pid, logs and temp paths in a directory of its own.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.procs import ROOT, NotReady, free_port, stop_process, wait_until

TEMPLATE = ROOT / "deploy" / "nginx" / "z-image-turbo.conf"
NGINX = "/usr/sbin/nginx"
# One access-log line per request: what the tests count (retries show as two
# upstream addresses and two upstream statuses).
LOG_FORMAT = (
    "$request_method\\t$uri\\t$status\\t$upstream_addr\\t$upstream_status\\t"
    "$cookie_zimage_affinity\\t$upstream_cache_status"
)


@dataclass(frozen=True)
class LogLine:
    method: str
    uri: str
    status: int
    upstreams: list[str]  # every replica tried, in order
    upstream_statuses: list[str]
    affinity: str  # the zimage_affinity cookie sent, or ""
    cache: str  # nginx's cache status for /images/, or ""


def render_site(template: str, replicas: list[str], port: int, cache_dir: Path) -> str:
    """The shipped site file with this machine's replicas, port and cache directory."""

    def upstream(match: re.Match[str]) -> str:
        block = match.group(0)
        first = re.search(r"^(\s*)server\s+\S+(.*?);\s*$", block, re.M)
        assert first is not None, "an upstream block of the template lists no server"
        indent, params = first.group(1), first.group(2)
        servers = "".join(f"{indent}server {addr}{params};\n" for addr in replicas)
        lines = re.findall(r"^\s*server\s+\S+.*?;[ \t]*\n", block, flags=re.M)
        for line in lines[1:]:
            block = block.replace(line, "")
        return block.replace(lines[0], servers)  # where the template lists them

    site, n = re.subn(r"upstream\s+\w+\s*\{.*?\n\}", upstream, template, flags=re.S)
    assert n == 2, f"expected two upstream blocks in {TEMPLATE}, found {n}"
    site, n = re.subn(r"^(\s*)listen\s+80;", rf"\1listen 127.0.0.1:{port};", site, flags=re.M)
    assert n == 1, "expected one `listen 80;` in the template"
    site, n = re.subn(r"proxy_cache_path\s+\S+", f"proxy_cache_path {cache_dir}", site)
    assert n == 1, "expected one proxy_cache_path in the template"
    return site


class Nginx:
    """nginx in the foreground on a free loopback port, proxying to `replicas` (host:port)."""

    def __init__(self, workdir: Path, replicas: list[str]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.access_log = workdir / "access.log"
        self.error_log = workdir / "error.log"
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi", "cache"):
            (workdir / sub).mkdir(parents=True, exist_ok=True)
        site = render_site(TEMPLATE.read_text(), replicas, self.port, workdir / "cache")
        (workdir / "site.conf").write_text(site)
        # As root, workers would drop to `nobody`, who cannot enter pytest's private
        # temp directories; keep them as the user that runs the tests.
        user = "user root;\n" if os.geteuid() == 0 else ""
        temps = "".join(
            f"    {kind}_temp_path {workdir / name};\n"
            for kind, name in [
                ("client_body", "body"),
                ("proxy", "proxy"),
                ("fastcgi", "fastcgi"),
                ("uwsgi", "uwsgi"),
                ("scgi", "scgi"),
            ]
        )
        self.conf = workdir / "nginx.conf"
        self.conf.write_text(
            f"{user}worker_processes 1;\npid {workdir / 'nginx.pid'};\n"
            f"error_log {self.error_log} info;\n"
            "events { worker_connections 512; }\n"
            "http {\n"
            f"    log_format zimage_test '{LOG_FORMAT}';\n"
            f"    access_log {self.access_log} zimage_test;\n"
            f"{temps}"
            f"    include {workdir / 'site.conf'};\n"
            "}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self, *extra: str) -> list[str]:
        return [NGINX, "-p", str(self.workdir), "-c", str(self.conf), "-g", "daemon off;", *extra]

    def check(self) -> str:
        """`nginx -t` on the generated configuration; returns its output (raises on failure)."""
        done = subprocess.run(self.command("-t"), capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"nginx -t failed:\n{done.stderr}")
        return done.stderr

    def start(self, timeout_s: float = 20) -> Nginx:
        self.check()
        with open(self.workdir / "stderr.log", "wb") as stderr:
            self.proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=stderr)
        proc = self.proc
        try:
            wait_until(
                lambda: httpx.get(self.url + "/health", timeout=5) is not None,
                "nginx",
                timeout_s=timeout_s,
                retry_on=(httpx.TransportError,),
                exited=lambda: (
                    None if proc.poll() is None else f"exited:\n{self.error_log.read_text(errors='replace')}"
                ),
            )
        except NotReady:
            self.stop()
            raise
        return self

    def log(self) -> list[LogLine]:
        """The access log so far, parsed."""
        lines = []
        for raw in self.access_log.read_text().splitlines():
            method, uri, status, addrs, statuses, cookie, cache = raw.split("\t")
            lines.append(
                LogLine(
                    method,
                    uri,
                    int(status),
                    [a.strip() for a in re.split(r"[,:]\s", addrs) if a.strip() not in ("", "-")]
                    if addrs != "-"
                    else [],
                    [s.strip() for s in re.split(r"[,:]\s", statuses) if s.strip() != "-"],
                    "" if cookie == "-" else cookie,
                    "" if cache == "-" else cache,
                )
            )
        return lines

    def wait_logged(self, count: int, uris: tuple[str, ...], timeout_s: float = 10) -> list[LogLine]:
        """The log's lines for `uris` once it holds `count` of them (nginx writes a line
        after the reply is sent), or as they are after `timeout_s` (the caller's asserts
        then say what is missing)."""

        def logged() -> list[LogLine]:
            return [x for x in self.log() if x.uri in uris]

        with contextlib.suppress(NotReady):
            wait_until(lambda: len(logged()) >= count, "nginx's access log", timeout_s=timeout_s)
        return logged()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace_s=10)  # SIGTERM: nginx's fast shutdown
