"""The processes under test (SafeNest, dnsmasq, unbound) and the upstream (nsd).

Every process is started in its own session so that it and all its children can be
killed by process group id at the end, whatever happens.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

from . import dnswire
from .dataset import Dataset, hit_name
from .sysstat import free_port

# Debian package that ships each binary.
PACKAGES = {
    "dnsperf": "dnsperf",
    "dnsmasq": "dnsmasq-base",
    "unbound": "unbound",
    "nsd": "nsd",
}
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"])


def which(binary: str) -> str | None:
    return shutil.which(binary, path=SEARCH_PATH)


def version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0].strip() if text else "unknown"


class Proc:
    """A started process group; ``stop()`` is idempotent and kills the whole group."""

    def __init__(self, name: str, argv: list[str], workdir: Path, env: dict | None = None):
        self.name = name
        self.argv = argv
        self.log_path = workdir / f"{name}.out"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=env,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        # SIGTERM to the leader first, so that it can stop and reap its own children
        # (nsd's server processes); then the whole group, then SIGKILL for what is left.
        steps = (
            (False, signal.SIGTERM, 5.0),
            (True, signal.SIGTERM, 2.0),
            (True, signal.SIGKILL, 2.0),
        )
        for group, sig, wait in steps:
            if self.popen.poll() is not None:
                break
            try:
                if group:
                    os.killpg(self.popen.pid, sig)
                else:
                    self.popen.send_signal(sig)
            except ProcessLookupError:
                break
            try:
                self.popen.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        # The leader is gone; make sure that no child it left behind survives.
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._log.close()

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])


class Nsd:
    """Authoritative upstream for bench.test with response-rate limiting off."""

    name = "nsd"

    def __init__(self, workdir: Path, dataset: Dataset):
        self.dir = workdir / "nsd"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dataset = dataset
        self.port = free_port()
        self.proc: Proc | None = None

    def config(self) -> str:
        d = self.dir
        return f"""server:
  ip-address: 127.0.0.1
  port: {self.port}
  server-count: 1
  username: ""
  chroot: ""
  zonesdir: "{d}"
  database: ""
  zonelistfile: "{d}/zone.list"
  xfrdfile: "{d}/xfrd.state"
  xfrdir: "{d}"
  pidfile: "{d}/nsd.pid"
  logfile: "{d}/nsd.log"
  verbosity: 0
  hide-version: yes
  # Debian builds nsd with response-rate limiting on: it would throttle cache misses.
  rrl-ratelimit: 0
  rrl-whitelist-ratelimit: 0
remote-control:
  control-enable: no
zone:
  name: bench.test.
  zonefile: "{self.dataset.zone_file}"
"""

    def start(self) -> None:
        conf = self.dir / "nsd.conf"
        conf.write_text(self.config())
        check = subprocess.run(
            [which("nsd-checkconf") or "nsd-checkconf", str(conf)], capture_output=True, text=True
        )
        if check.returncode != 0:
            raise RuntimeError(f"nsd.conf rejected: {check.stdout}{check.stderr}")
        self.proc = Proc("nsd", [which("nsd"), "-d", "-c", str(conf)], self.dir)
        got = dnswire.wait_answer(hit_name(1), self.port, 15, self.proc.alive)
        if got is None or got[0] != "NOERROR" or got[1] != 2:
            raise RuntimeError(f"nsd did not answer ({got}):\n{self.proc.tail()}")

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()


class Peer:
    """A caching forwarder under test."""

    name = "peer"
    binary = ""

    def __init__(self, workdir: Path, dataset: Dataset, upstream_port: int, cache_entries: int):
        self.workdir = workdir
        self.dataset = dataset
        self.upstream_port = upstream_port
        self.cache_entries = cache_entries
        self.port = 0
        self.proc: Proc | None = None
        self.instance = 0

    def available(self) -> str | None:
        """None if it can run here, else why not."""
        if which(self.binary) is None:
            return f"{self.binary} not found: apt-get install {PACKAGES[self.binary]}"
        return None

    def version(self) -> str:
        return "unknown"

    def argv_env(self, rundir: Path) -> tuple[list[str], dict | None]:
        raise NotImplementedError

    @property
    def ready_timeout(self) -> float:
        return 15.0

    def start(self) -> None:
        """Start a fresh instance (empty cache) on a new port; raise if it does not answer."""
        self.instance += 1
        rundir = self.workdir / f"{self.name}-{self.instance}"
        rundir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        argv, env = self.argv_env(rundir)
        self.command = argv
        self.proc = Proc(self.name, argv, rundir, env)
        got = dnswire.wait_answer(hit_name(1), self.port, self.ready_timeout, self.proc.alive)
        if got is None:
            tail = self.proc.tail()
            self.stop()
            raise RuntimeError(
                f"{self.name} did not answer on 127.0.0.1:{self.port} within "
                f"{self.ready_timeout:.0f} s" + (f":\n{tail}" if tail else "")
            )
        if got != ("NOERROR", 2):
            tail = self.proc.tail()
            self.stop()
            raise RuntimeError(f"{self.name} answered {got} for {hit_name(1)}:\n{tail}")

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()
            self.proc = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


class Dnsmasq(Peer):
    name = "dnsmasq"
    binary = "dnsmasq"

    def __init__(self, *args, forward_max: int = 1000, **kwargs):
        super().__init__(*args, **kwargs)
        self.forward_max = forward_max

    def version(self) -> str:
        return version([which("dnsmasq"), "--version"])

    def argv_env(self, rundir: Path):
        return [
            which("dnsmasq"),
            "-k",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            f"--server=127.0.0.1#{self.upstream_port}",
            f"--cache-size={self.cache_entries}",
            f"--dns-forward-max={self.forward_max}",
            f"--port={self.port}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--pid-file=",
            f"--log-facility={rundir}/dnsmasq.log",
        ], None


class Unbound(Peer):
    name = "unbound"
    binary = "unbound"

    def version(self) -> str:
        return version([which("unbound"), "-V"])

    def config(self, rundir: Path) -> str:
        return f"""server:
  interface: 127.0.0.1
  port: {self.port}
  do-ip6: no
  do-tcp: yes
  num-threads: 1
  so-rcvbuf: 4m
  so-reuseport: no
  access-control: 127.0.0.0/8 allow
  username: ""
  chroot: ""
  directory: "{rundir}"
  pidfile: "{rundir}/unbound.pid"
  use-syslog: no
  logfile: "{rundir}/unbound.log"
  verbosity: 0
  do-daemonize: no
  module-config: "iterator"
  do-not-query-localhost: no
  local-zone: "test." nodefault
  domain-insecure: "bench.test."
  qname-minimisation: no
  prefetch: no
  ratelimit: 0
  ip-ratelimit: 0
  outgoing-range: 8192
  num-queries-per-thread: 4096
  msg-cache-size: {max(64, self.cache_entries * 256 >> 20)}m
  rrset-cache-size: {max(128, self.cache_entries * 512 >> 20)}m
  key-cache-size: 4m
  neg-cache-size: 4m
remote-control:
  control-enable: no
forward-zone:
  name: "."
  forward-addr: 127.0.0.1@{self.upstream_port}
"""

    def argv_env(self, rundir: Path):
        conf = rundir / "unbound.conf"
        conf.write_text(self.config(rundir))
        check = subprocess.run(
            [which("unbound-checkconf") or "unbound-checkconf", str(conf)],
            capture_output=True,
            text=True,
        )
        if check.returncode != 0:
            raise RuntimeError(f"unbound.conf rejected: {check.stdout}{check.stderr}")
        return [which("unbound"), "-d", "-c", str(conf)], None


class SafeNest(Peer):
    name = "safenest"
    binary = "safenest"

    def __init__(
        self,
        *args,
        executable: str,
        wait: float = 10.0,
        policy: bool = True,
        name: str = "safenest",
        env: dict[str, str] | None = None,
        metrics: bool = False,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.executable = executable
        self.wait = wait
        self.name = name
        # A household's policy (bench/household.py) in DATA/safenest.db before every start;
        # False: the out-of-the-box default (every device the 12+ default profile).
        self.policy = policy
        self.policy_summary = ""
        self.env = env or {}
        # The admin server (/metrics) on a loopback port chosen at start, else --admin off:
        # never port 80 on every address.
        self.metrics = metrics
        self.admin_port = 0

    @property
    def ready_timeout(self) -> float:
        return self.wait

    def available(self) -> str | None:
        if not (os.path.isfile(self.executable) and os.access(self.executable, os.X_OK)):
            return f"{self.executable} not found (run `make` / `pip install -e .` first)"
        try:
            out = subprocess.run(
                [self.executable, "run", "--help"], capture_output=True, text=True, timeout=20
            )
        except subprocess.TimeoutExpired:
            return f"`{self.executable} run --help` did not return within 20 s"
        if out.returncode != 0:
            last = (out.stderr or out.stdout).strip().splitlines()[-1:] or [""]
            return f"`{self.executable} run --help` failed: {last[0]}"
        return None

    def version(self) -> str:
        return version([self.executable, "--version"])

    def extra_env(self) -> dict[str, str]:
        return {
            "SAFENEST_BLOCKLISTS_DIR": str(self.dataset.lists_dir),
            "SAFENEST_CACHE_MAX_ENTRIES": str(self.cache_entries),
            "SAFENEST_CACHE_MAX_BYTES": str(self.cache_entries * 1024),
            # The per-client rate limit would drop dnsperf (one client, 127.0.0.1) after
            # 1,000 queries a minute; the peers have none, and the upstream has no RRL.
            "SAFENEST_RATE_LIMIT_QUERIES": "0",
        } | self.env

    def argv_env(self, rundir: Path):
        if self.policy:
            from .household import write_policy

            self.policy_summary = write_policy(rundir / "var")
        env = dict(os.environ) | self.extra_env()
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.admin_port = free_port() if self.metrics else 0
        admin = f"127.0.0.1:{self.admin_port}" if self.metrics else "off"
        return [
            self.executable,
            "run",
            "--data",
            str(rundir / "var"),
            "--dns",
            f"127.0.0.1:{self.port}",
            "--upstream",
            f"127.0.0.1:{self.upstream_port}",
            "--admin",
            admin,
        ], env

    def metrics_text(self, timeout: float = 5.0) -> str:
        """GET /metrics from the admin server on loopback (metrics_clients: loopback)."""
        from urllib.request import urlopen

        url = f"http://127.0.0.1:{self.admin_port}/metrics"
        with urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback, our own URL
            return response.read().decode()


def check_binaries(names: list[str]) -> list[str]:
    """Messages for the missing binaries among ``names`` (keys of PACKAGES)."""
    return [f"{b} not found: apt-get install {PACKAGES[b]}" for b in names if which(b) is None]
