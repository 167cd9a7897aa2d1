"""The `safenest` command as a user runs it: a real child process, real sockets on 127.0.0.1, real signals.

Every child writes its output to files (no pipes to drain or leak) and runs in its own
process group, which the fixture kills if a test leaves it running.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import pytest

from tests.dnsfakes import free_port

_SCRIPT = Path(sys.executable).with_name("safenest")
SAFENEST = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "agent"]

START_TIMEOUT = 20.0  # generous: other work may be running on the same machine
STOP_TIMEOUT = 5.0


# ---------------------------------------------------------------- helpers


def ask(port: int, name: str, rdtype: str = "A", timeout: float = 2.0) -> dns.message.Message:
    return dns.query.udp(
        dns.message.make_query(name, rdtype), "127.0.0.1", port=port, timeout=timeout
    )


def addresses(message: dns.message.Message) -> list[str]:
    return sorted(r.to_text() for rrset in message.answer for r in rrset)


def clean_environ(**extra: str) -> dict[str, str]:
    """This process's environment without any SAFENEST_* variable, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFENEST_")}
    env.update(extra)
    return env


class Child:
    """One `safenest ...` process; stdout and stderr go to files."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path, logs: Path, **popen):
        self.out_path = logs.with_suffix(".out")
        self.err_path = logs.with_suffix(".err")
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [*SAFENEST, *args],
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # its own process group, so the list builder dies with it
                **popen,
            )

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(encoding="utf-8", errors="replace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(encoding="utf-8", errors="replace")

    def running(self) -> bool:
        return self.proc.poll() is None

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"safenest did not exit within {timeout} s; stderr:\n{self.stderr}")

    def wait_serving(self, port: int, probe: str = "ok.test") -> None:
        """Until the start-up is complete (signal handlers in place) and `probe` is answered."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if not self.running():
                pytest.fail(
                    f"safenest exited with {self.proc.returncode} while starting; stderr:\n{self.stderr}"
                )
            if "SafeNest is running" in self.stderr:
                try:
                    ask(port, probe, timeout=0.3)
                    return
                except (dns.exception.Timeout, OSError):
                    pass
            time.sleep(0.05)
        pytest.fail(
            f"safenest did not answer on 127.0.0.1:{port} within {START_TIMEOUT} s; stderr:\n{self.stderr}"
        )

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=STOP_TIMEOUT)


@pytest.fixture
def blocklists(tmp_path) -> Path:
    folder = tmp_path / "lists"
    folder.mkdir()
    (folder / "gambling.txt").write_text("# test list\nfb88.test\ncasino.test\n")
    (folder / "adult.txt").write_text("# test list\nadult.test\n")
    return folder


@pytest.fixture
def upstream(fake_upstream):
    server = fake_upstream()
    server.answer("ok.test", "A", "192.0.2.1")
    server.answer("new.test", "A", "192.0.2.2")
    server.answer("sub.new.test", "A", "192.0.2.3")
    server.answer("fb88.test", "A", "192.0.2.66")  # what a name gets when it is not blocked
    return server


@pytest.fixture
def safenest(tmp_path, blocklists):
    """Start `safenest ARGS...` with SAFENEST_BLOCKLISTS_DIR set; every child is killed at the end."""
    children: list[Child] = []

    def start(*args: str, env: dict[str, str] | None = None, **popen) -> Child:
        environ = clean_environ(SAFENEST_BLOCKLISTS_DIR=str(blocklists))
        environ.update(env or {})
        child = Child(
            list(args),
            environ,
            popen.pop("cwd", tmp_path),
            tmp_path / f"child{len(children)}",
            **popen,
        )
        children.append(child)
        return child

    yield start
    for child in children:
        child.kill()


def run_to_end(
    safenest, *args: str, env: dict[str, str] | None = None, timeout: float = 20
) -> Child:
    child = safenest(*args, env=env)
    child.wait(timeout)
    return child


# ---------------------------------------------------------------- safenest run


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_run_answers_logs_its_settings_and_stops_cleanly_on_signal(
    safenest, upstream, blocklists, tmp_path, signum
):
    port = free_port()
    data = tmp_path / "data"
    child = safenest(
        "run", "--dns", f"127.0.0.1:{port}", "--upstream", upstream.address, "--data", str(data),
        "--admin", "off",
    )
    child.wait_serving(port)

    answer = ask(port, "ok.test")
    assert answer.rcode() == dns.rcode.NOERROR
    assert addresses(answer) == ["192.0.2.1"]
    assert upstream.count("ok.test") >= 1
    blocked = ask(port, "www.fb88.test")
    assert blocked.rcode() == dns.rcode.NOERROR
    assert addresses(blocked) == ["0.0.0.0"]
    assert upstream.count("www.fb88.test") == 0

    log = child.stderr
    assert "block_mode = 'null' (default)" in log
    assert f"upstream = ['{upstream.address}'] (command line)" in log
    assert f"dns = ['127.0.0.1:{port}'] (command line)" in log
    assert f"blocklists_dir = '{blocklists}' (environment SAFENEST_BLOCKLISTS_DIR)" in log
    assert (data / "lists.idx").is_file()

    started = time.monotonic()
    child.signal(signum)
    assert child.wait() == 0, child.stderr
    assert time.monotonic() - started < STOP_TIMEOUT
    assert "Traceback" not in child.stderr
    # Both sockets were given back: the port can be bound again at once.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, socket.socket() as tcp:
        udp.bind(("127.0.0.1", port))
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind(("127.0.0.1", port))


def test_sighup_recompiles_the_lists_while_serving(safenest, upstream, blocklists, tmp_path):
    port = free_port()
    child = safenest(
        "run",
        "--admin",
        "off",
        "--dns",
        f"127.0.0.1:{port}",
        "--upstream",
        upstream.address,
        "--data",
        str(tmp_path / "d"),
    )
    child.wait_serving(port)
    assert addresses(ask(port, "new.test")) == ["192.0.2.2"]  # allowed, and now in the cache

    with open(blocklists / "gambling.txt", "a") as f:
        f.write("new.test\n")
    child.signal(signal.SIGHUP)

    deadline = time.monotonic() + 10
    while addresses(ask(port, "new.test")) != ["0.0.0.0"]:
        assert child.running(), child.stderr
        assert time.monotonic() < deadline, (
            f"new.test still not blocked 10 s after SIGHUP; stderr:\n{child.stderr}"
        )
        time.sleep(0.1)

    assert addresses(ask(port, "sub.new.test")) == ["0.0.0.0"]
    assert addresses(ask(port, "fb88.test")) == ["0.0.0.0"]  # the old entries are still there
    assert addresses(ask(port, "ok.test")) == ["192.0.2.1"]  # and the rest still resolves
    assert child.running()
    child.signal(signal.SIGTERM)
    assert child.wait() == 0, child.stderr


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_a_port_another_program_holds_is_a_clear_error(safenest, upstream, tmp_path, proto):
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as holder:
        holder.bind(("127.0.0.1", 0))
        if proto == "tcp":
            holder.listen(1)
        port = holder.getsockname()[1]
        child = run_to_end(
            safenest,
            "run",
            "--admin",
            "off",
            "--dns",
            f"127.0.0.1:{port}",
            "--upstream",
            upstream.address,
            "--data",
            str(tmp_path / "d"),
        )
    assert child.proc.returncode not in (0, None)
    assert (
        f"cannot listen on 127.0.0.1:{port}: another program already serves that port"
        in child.stderr
    )
    assert "Traceback" not in child.stderr


def _nobody_can_run_safenest() -> bool:
    try:
        probe = subprocess.run(
            [*SAFENEST, "--version"],
            user="nobody",
            group=pwd.getpwnam("nobody").pw_gid,
            extra_groups=[],
            cwd="/",
            capture_output=True,
            timeout=20,
        )
    except (KeyError, OSError, subprocess.SubprocessError):
        return False
    return probe.returncode == 0


def test_a_privileged_port_as_an_ordinary_user_is_a_clear_error(safenest, upstream):
    with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
        if int(f.read()) <= 53:
            pytest.skip("this kernel lets every user bind port 53")
    popen = {}
    if os.geteuid() == 0:
        # Root may bind port 53; run the child as nobody instead, if nobody can run it at all.
        if not _nobody_can_run_safenest():
            pytest.skip("running as root and user nobody cannot run safenest here")
        popen = {
            "user": "nobody",
            "group": pwd.getpwnam("nobody").pw_gid,
            "extra_groups": [],
            "cwd": "/",
        }
    data = Path(
        tempfile.mkdtemp(prefix="safenest-cli-")
    )  # not under tmp_path: nobody must write here
    try:
        data.chmod(0o777)
        child = safenest(
            "run",
            "--admin",
            "off",
            "--dns",
            "127.0.0.1:53",
            "--upstream",
            upstream.address,
            "--data",
            str(data / "var"),
            **popen,
        )
        child.wait(20)
    finally:
        shutil.rmtree(data, ignore_errors=True)
    assert child.proc.returncode not in (0, None)
    assert (
        "cannot listen on 127.0.0.1:53: ports below 1024 need root or CAP_NET_BIND_SERVICE"
        in child.stderr
    )
    assert "--dns 127.0.0.1:5300" in child.stderr
    assert "Traceback" not in child.stderr


def test_upstream_that_is_safenest_itself_is_refused(safenest, tmp_path):
    port = free_port()
    child = run_to_end(
        safenest,
        "run",
        "--admin",
        "off",
        "--dns",
        f"127.0.0.1:{port}",
        "--upstream",
        f"127.0.0.1:{port}",
        "--data",
        str(tmp_path / "d"),
    )
    assert child.proc.returncode not in (0, None)
    err = child.stderr
    assert "no upstream resolver to forward to" in err
    assert "SafeNest itself" in err
    assert "--upstream ADDR[:PORT]" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "resolv_conf",
    ["", "# generated by NetworkManager\nsearch lan\n", "nameserver 127.0.0.1:{port}\n"],
    ids=["empty", "no-nameserver", "only-itself"],
)
def test_no_upstream_anywhere_explains_how_to_give_one(safenest, tmp_path, resolv_conf):
    port = free_port()
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(resolv_conf.format(port=port))
    child = run_to_end(
        safenest,
        "run",
        "--admin",
        "off",
        "--dns",
        f"127.0.0.1:{port}",
        "--data",
        str(tmp_path / "d"),
        env={"SAFENEST_RESOLV_CONF": str(resolv)},
    )
    assert child.proc.returncode not in (0, None)
    err = child.stderr
    assert "no upstream resolver to forward to" in err
    assert str(resolv) in err
    assert "--upstream ADDR[:PORT]" in err
    assert "Traceback" not in err


def test_safenest_environment_variables_take_effect(safenest, upstream, tmp_path):
    """Everything from SAFENEST_* variables, no flags at all."""
    port = free_port()
    data = tmp_path / "from-env"
    child = safenest(
        "run",
        env={
            "SAFENEST_DNS": f"127.0.0.1:{port}",
            "SAFENEST_UPSTREAM": upstream.address,
            "SAFENEST_DATA": str(data),
            "SAFENEST_BLOCK_MODE": "nxdomain",
            "SAFENEST_ADMIN_LISTEN": "off",
        },
    )
    child.wait_serving(port)
    blocked = ask(port, "casino.test")
    assert blocked.rcode() == dns.rcode.NXDOMAIN
    assert blocked.answer == []
    assert addresses(ask(port, "ok.test")) == ["192.0.2.1"]
    assert "block_mode = 'nxdomain' (environment SAFENEST_BLOCK_MODE)" in child.stderr
    assert (data / "lists.idx").is_file()
    child.signal(signal.SIGTERM)
    assert child.wait() == 0


def test_config_file_then_environment_then_flags(safenest, upstream, tmp_path):
    port = free_port()
    config = tmp_path / "safenest.toml"
    config.write_text(
        'block_mode = "nxdomain"\n'
        "block_ttl = 42\n"
        'dns = ["127.0.0.1:1"]\n'  # replaced by --dns
        f'upstream = ["{upstream.address}"]\n'
    )
    child = safenest(
        "run",
        "--admin",
        "off",
        "--dns",
        f"127.0.0.1:{port}",
        "--data",
        str(tmp_path / "d"),
        env={"SAFENEST_CONFIG": str(config), "SAFENEST_BLOCK_MODE": "null"},
    )
    child.wait_serving(port)
    blocked = ask(port, "fb88.test")
    assert addresses(blocked) == ["0.0.0.0"]  # the environment beat the file
    assert blocked.answer[0].ttl == 42  # the file beat the default
    assert f"block_ttl = 42 (config file {config})" in child.stderr
    child.signal(signal.SIGTERM)
    assert child.wait() == 0


@pytest.mark.parametrize(
    ("command", "config", "env", "words"),
    [
        (["run"], 'block_ttl = "ten"\n', {}, ["config file", "block_ttl"]),
        (["run"], "[[[\n", {}, ["not valid TOML"]),
        (
            ["run"],
            None,
            {"SAFENEST_BLOCK_MODE": "refuse"},
            ["environment SAFENEST_BLOCK_MODE", "block_mode", "refuse"],
        ),
        (
            ["explain", "ok.test"],
            None,
            {"SAFENEST_COLOUR": "red"},
            ["environment SAFENEST_COLOUR", "unknown setting"],
        ),
        (
            ["run"],
            None,
            {"SAFENEST_CONFIG": "{tmp}/missing.toml"},
            ["cannot read config file", "missing.toml"],
        ),
    ],
    ids=["bad-int-in-file", "bad-toml", "bad-choice-in-env", "unknown-variable", "missing-file"],
)
def test_bad_settings_stop_with_a_message_naming_them(
    safenest, tmp_path, command, config, env, words
):
    args = list(command)
    if config is not None:
        path = tmp_path / "bad.toml"
        path.write_text(config)
        args += ["--config", str(path)]
    env = {k: v.format(tmp=tmp_path) for k, v in env.items()}
    child = run_to_end(safenest, *args, "--data", str(tmp_path / "d"), env=env)
    assert child.proc.returncode == 1
    err = child.stderr
    assert err.startswith("Error: ")
    for word in words:
        assert word in err
    assert "Traceback" not in err
    assert not (tmp_path / "d").exists()  # stopped before doing anything


# ---------------------------------------------------------------- corrupt or missing saved lists


def _real_index(safenest, tmp_path) -> bytes:
    data = tmp_path / "good"
    child = run_to_end(safenest, "explain", "ok.test", "--data", str(data))
    assert child.proc.returncode == 0, child.stderr
    return (data / "lists.idx").read_bytes()


@pytest.mark.parametrize("damage", ["empty", "garbage", "truncated", "flipped"])
def test_a_corrupt_saved_index_does_not_stop_run(safenest, upstream, tmp_path, damage):
    data = tmp_path / "d"
    data.mkdir()
    good = _real_index(safenest, tmp_path) if damage in ("truncated", "flipped") else b""
    content = {
        "empty": b"",
        "garbage": b"this is not an index\x00\xff" * 200,
        "truncated": good[: len(good) // 2],
        "flipped": good[:-8] + bytes(b ^ 0xFF for b in good[-8:]),
    }[damage]
    (data / "lists.idx").write_bytes(content)
    port = free_port()
    child = safenest(
        "run", "--dns", f"127.0.0.1:{port}", "--upstream", upstream.address, "--data", str(data),
        "--admin", "off",
    )
    child.wait_serving(port)
    assert addresses(ask(port, "ok.test")) == ["192.0.2.1"]
    assert addresses(ask(port, "fb88.test")) == ["0.0.0.0"]  # the lists were compiled afresh
    assert (data / "lists.idx").read_bytes() != content  # and the bad file replaced
    child.signal(signal.SIGTERM)
    assert child.wait() == 0
    assert "Traceback" not in child.stderr


def test_saved_lists_keep_filtering_when_the_list_folder_is_gone(
    safenest, upstream, blocklists, tmp_path
):
    data = tmp_path / "d"
    assert run_to_end(safenest, "explain", "ok.test", "--data", str(data)).proc.returncode == 0
    gone = {"SAFENEST_BLOCKLISTS_DIR": str(tmp_path / "no-such-folder")}
    port = free_port()
    child = safenest(
        "run",
        "--admin",
        "off",
        "--dns",
        f"127.0.0.1:{port}",
        "--upstream",
        upstream.address,
        "--data",
        str(data),
        env=gone,
    )
    child.wait_serving(port)
    assert addresses(ask(port, "fb88.test")) == ["0.0.0.0"]
    deadline = time.monotonic() + 10  # until the background recompile has given up
    while "cannot compile" not in child.stderr and "lists in force" not in child.stderr:
        assert time.monotonic() < deadline, child.stderr
        time.sleep(0.05)
    assert addresses(ask(port, "adult.test")) == ["0.0.0.0"], (
        child.stderr
    )  # the saved lists stay in force
    assert addresses(ask(port, "ok.test")) == ["192.0.2.1"]
    child.signal(signal.SIGTERM)
    assert child.wait() == 0
    # ...and stay saved for the next start.
    explained = run_to_end(safenest, "explain", "casino.test", "--data", str(data), env=gone)
    assert "blocked" in explained.stdout, explained.stdout + explained.stderr


# ---------------------------------------------------------------- safenest explain


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("fb88.test", "fb88.test"),
        ("www.FB88.test.", "www.fb88.test"),
        ("a.b.casino.test", "a.b.casino.test"),
    ],
)
def test_explain_a_blocked_name(safenest, tmp_path, name, shown):
    child = run_to_end(safenest, "explain", name, "--data", str(tmp_path / "d"))
    assert child.proc.returncode == 0, child.stderr
    out = child.stdout
    first = out.splitlines()[0]
    assert first.startswith(f"{shown}: blocked")
    assert "category gambling" in first
    assert "lists/gambling.txt" in first  # the list label
    assert "reason: category=gambling" in out


def test_explain_an_allowed_name(safenest, tmp_path):
    child = run_to_end(safenest, "explain", "ok.test", "--data", str(tmp_path / "d"))
    assert child.proc.returncode == 0, child.stderr
    first = child.stdout.splitlines()[0]
    assert first.startswith("ok.test: allowed")
    assert "blocked" not in child.stdout


@pytest.mark.parametrize(
    ("private", "reason", "answer"),
    [
        ("none", "local name: not sent upstream", "NXDOMAIN (no such name), answered here"),
        ("192.168.1.1", "local name: asked of 192.168.1.1:53", "192.168.1.1:53's answer"),
    ],
)
def test_explain_a_name_that_stays_on_the_lan(safenest, tmp_path, private, reason, answer):
    # The same reason the LocalZones link gives the query log (agent/dns/steps/local_zones.py).
    env = {"SAFENEST_PRIVATE_UPSTREAM": private}
    child = run_to_end(
        safenest, "explain", "20.1.168.192.in-addr.arpa", "--type", "PTR",
        "--data", str(tmp_path / "d"), env=env,
    )
    assert child.proc.returncode == 0, child.stderr
    assert f"reason: {reason}\n" in child.stdout
    assert f"answer: {answer}" in child.stdout
    local = run_to_end(safenest, "explain", "app.localhost", "--data", str(tmp_path / "d"), env=env)
    assert "reason: localhost (RFC 6761)" in local.stdout


@pytest.mark.parametrize(
    "name,rtype,reason",
    [
        ("printer", "A", "local name: not sent upstream"),
        ("PRINTER.", "AAAA", "local name: not sent upstream"),
        ("localhost", "A", "localhost (RFC 6761)"),
    ],
)
def test_explain_a_dotless_name(safenest, tmp_path, name, rtype, reason):
    # Dotless A/AAAA names are the LAN's devices: the resolver never sends them upstream.
    env = {"SAFENEST_PRIVATE_UPSTREAM": "none"}
    child = run_to_end(
        safenest, "explain", name, "--type", rtype, "--data", str(tmp_path / "d"), env=env
    )
    assert child.proc.returncode == 0, child.stderr
    assert f"reason: {reason}\n" in child.stdout


def test_explain_with_safenest_data_instead_of_data(safenest, tmp_path):
    data = tmp_path / "via-env"
    child = run_to_end(safenest, "explain", "www.adult.test", env={"SAFENEST_DATA": str(data)})
    assert child.proc.returncode == 0, child.stderr
    assert child.stdout.startswith("www.adult.test: blocked for profile default (12+): category adult")
    assert "lists/adult.txt" in child.stdout
    assert (data / "lists.idx").is_file()  # the folder named by SAFENEST_DATA was used
    assert not (tmp_path / "var").exists()  # not the default ./var


@pytest.mark.parametrize(
    "name",
    [
        "bad..name",
        "x" * 64 + ".test",
        "a." * 127 + "test",
        "https://www.fb88.test/page",
        "fb88 test",
        "1234",
        "x" * 64,
    ],
    ids=["empty-label", "long-label", "long-name", "url", "space", "number", "long-dotless"],
)
def test_explain_a_bad_name_is_a_clear_error(safenest, tmp_path, name):
    child = run_to_end(safenest, "explain", name, "--data", str(tmp_path / "d"))
    assert child.proc.returncode not in (0, None), child.stdout
    assert "is not a domain name" in child.stderr
    assert "Traceback" not in child.stderr
    assert "blocked" not in child.stdout and "allowed" not in child.stdout


def _family(data: Path, **changes) -> None:
    """A policy in DATA/safenest.db: 127.0.0.2 is a 9-year-old with a bedtime, and a rule."""
    from agent.policy.model import Device, Policy, Profile, Rule, Schedule
    from agent.storage.policy_store import open_policy_store

    year = time.localtime().tm_year
    policy = Policy(
        profiles=(Profile("default", "Default", band="12+"), Profile("lan", "Lan", birth=(year - 9, 1))),
        devices=(Device("lan-phone", "Lan's phone", "ip", "127.0.0.2", "lan"),),
        rules=(Rule("ok.test", "block", profile="lan"),),
        schedules=(Schedule("bedtime", "lan", "Bedtime", frozenset(range(7)), "21:30", "06:30", "internet_off"),),
        **changes,
    )
    store = open_policy_store(data)
    store.replace(policy)
    store.database.close()


def test_explain_for_a_client_at_a_time(safenest, tmp_path):
    data = tmp_path / "d"
    _family(data)
    # The unknown device (default profile) may; the child's rule blocks it.
    out = run_to_end(safenest, "explain", "ok.test", "--data", str(data)).stdout
    assert out.startswith("ok.test: allowed for profile default (12+)")
    child = run_to_end(safenest, "explain", "ok.test", "--client", "127.0.0.2", "--at", "12:00", "--data", str(data))
    assert child.proc.returncode == 0, child.stderr
    lines = child.stdout.splitlines()
    assert lines[0] == "ok.test: blocked for profile lan (00+): a rule blocks ok.test and its subdomains"
    assert "reason: rule=block:ok.test" in lines
    assert "answer: 0.0.0.0 (blocked)" in lines
    assert "profile: lan (Lan), for client 127.0.0.2" in lines
    assert any(line.startswith("at: ") and "T12:00+07:00 (Asia/Ho_Chi_Minh)" in line for line in lines)
    # At 22:00 the bedtime window decides first for any name; in the morning the ages do.
    night = run_to_end(safenest, "explain", "other.test", "--client", "127.0.0.2", "--at", "2026-11-30T22:00", "--data", str(data))
    assert "reason: schedule=bedtime" in night.stdout, night.stdout + night.stderr
    day = run_to_end(safenest, "explain", "other.test", "--client", "127.0.0.2", "--at", "2026-11-30T10:00+07:00", "--data", str(data))
    assert "reason: default" in day.stdout
    assert "TTLs at most 300 s" in day.stdout  # a profile with a schedule


def test_explain_a_type_and_safesearch(safenest, tmp_path):
    data = tmp_path / "d"
    _family(data)
    out = run_to_end(safenest, "explain", "www.google.com.vn", "--type", "https", "--data", str(data)).stdout
    assert "reason: safesearch=google" in out
    assert "answer: CNAME forcesafesearch.google.com and its records" in out
    txt = run_to_end(safenest, "explain", "www.google.com.vn", "--type", "TXT", "--data", str(data)).stdout
    assert "reason: default" in txt  # only A, AAAA and HTTPS are rewritten
    arpa = run_to_end(safenest, "explain", "x.resolver.arpa", "--type", "TYPE64", "--data", str(data)).stdout
    assert "answer: no records (NODATA)" in arpa


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--client", "not-an-ip"], ["--client", "not an IP address"]),
        (["--at", "25:00"], ["--at", "not a time"]),
        (["--at", "tomorrow"], ["--at", "not a time"]),
        (["--type", "BOGUS"], ["--type", "not a DNS record type"]),
    ],
    ids=["client", "hour", "word", "type"],
)
def test_explain_bad_options_are_clear_errors(safenest, tmp_path, args, words):
    child = run_to_end(safenest, "explain", "ok.test", *args, "--data", str(tmp_path / "d"))
    assert child.proc.returncode == 2
    for word in words:
        assert word in child.stderr
    assert "Traceback" not in child.stderr


def test_explain_without_usable_lists_does_not_say_allowed(safenest, tmp_path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    child = run_to_end(safenest, "explain", "fb88.test", "--data", str(not_a_folder / "d"))
    assert not (child.proc.returncode == 0 and "allowed" in child.stdout), child.stdout
