"""A real SLURM cluster for the tests: munged + slurmctld + two slurmd on this machine.

The first node carries this host's name and is the default partition (`debug`), so jobs run as
before; a second slurmd (its own node name, port, spool and log) joins it in the `multinode`
partition, where a job gets two nodes and `srun` starts one task on each: a real multi-node job
on one host.

Everything lives in a temporary folder (config, state, spool, logs, munge socket and key);
daemons are stopped by pid afterwards. Debian's slurm-wlm and munge must be installed
(`scripts/setup.sh --system` installs them when run as root).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


class ClusterUnavailable(Exception):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mem_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024 - 512
    return 4096


class SlurmCluster:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.procs: list[int] = []
        self.env: dict[str, str] = {}
        self.host = socket.gethostname().split(".")[0]
        self.second = "aamnode2"  # the second slurmd: its own node name on the same host

    def start(self, timeout: float = 60.0) -> "SlurmCluster":
        for tool in ("munged", "slurmctld", "slurmd", "sbatch"):
            if not shutil.which(tool):
                raise ClusterUnavailable(f"{tool} is not installed (apt-get install slurm-wlm munge)")
        if os.geteuid() != 0:
            raise ClusterUnavailable("starting slurmd needs root")
        r = self.root
        for sub in ("state", "spool", "log", "munge"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        for node in (self.host, self.second):
            (r / "spool" / node).mkdir(exist_ok=True)
        os.chmod(r / "munge", 0o700)
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o600)
        sock = r / "munge" / "munge.socket"
        subprocess.run(["munged", "--force", "--key-file", str(key), "--socket", str(sock),
                        "--pid-file", str(r / "munge" / "munged.pid"), "--log-file", str(r / "log" / "munged.log"),
                        "--seed-file", str(r / "munge" / "munged.seed")], check=True, capture_output=True)
        self._track(r / "munge" / "munged.pid")
        cpus = os.cpu_count() or 2
        conf = r / "slurm.conf"
        conf.write_text(f"""ClusterName=aamtest
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={_free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r / 'spool'}/%n
SlurmctldPidFile={r / 'slurmctld.pid'}
SlurmdPidFile={r / 'slurmd-%n.pid'}
SlurmctldLogFile={r / 'log' / 'slurmctld.log'}
SlurmdLogFile={r / 'log' / 'slurmd-%n.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
JobRequeue=1
MinJobAge=600
KillWait=5
InactiveLimit=0
SchedulerParameters=sched_interval=2
MessageTimeout=20
NodeName={self.host} NodeAddr=127.0.0.1 Port={_free_port()} CPUs={cpus} RealMemory={_mem_mb()} State=UNKNOWN
NodeName={self.second} NodeHostname={self.host} NodeAddr=127.0.0.1 Port={_free_port()} CPUs={cpus} RealMemory={_mem_mb()} State=UNKNOWN
PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
PartitionName=multinode Nodes={self.host},{self.second} MaxTime=INFINITE State=UP
""")
        self.env = {"SLURM_CONF": str(conf)}
        env = {**os.environ, **self.env}
        subprocess.run(["slurmctld", "-i"], env=env, check=True, capture_output=True)
        self._track(r / "slurmctld.pid", wait=10)
        for node in (self.host, self.second):
            subprocess.run(["slurmd", "-N", node], env=env, check=True, capture_output=True)
            self._track(r / f"slurmd-{node}.pid", wait=10)
        deadline = time.time() + timeout
        while time.time() < deadline:
            p = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], env=env, capture_output=True, text=True)
            states = dict(line.split() for line in p.stdout.splitlines() if len(line.split()) == 2)  # node -> state
            if p.returncode == 0 and len(states) == 2 and all(t in ("idle", "mix", "alloc") for t in states.values()):
                return self
            time.sleep(0.5)
        self.stop()
        raise ClusterUnavailable("the nodes did not become idle: " + self.logs())

    def _track(self, pidfile: Path, wait: float = 5) -> None:
        deadline = time.time() + wait
        while time.time() < deadline:
            try:
                self.procs.append(int(pidfile.read_text().strip()))
                return
            except (OSError, ValueError):
                time.sleep(0.1)
        raise ClusterUnavailable(f"{pidfile.name} not written: " + self.logs())

    def logs(self) -> str:
        out = []
        for f in sorted((self.root / "log").glob("*.log")):
            out.append(f"== {f.name}\n" + "\n".join(f.read_text(errors="replace").splitlines()[-15:]))
        return "\n".join(out)

    def stop(self) -> None:
        env = {**os.environ, **self.env}
        subprocess.run(["scancel", "--full", "-u", "root"], env=env, capture_output=True, timeout=20)
        for pid in reversed(self.procs):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.time() + 10
        for pid in self.procs:
            while time.time() < deadline:
                try:
                    os.kill(pid, 0)
                    time.sleep(0.1)
                except ProcessLookupError:
                    break
            else:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.procs.clear()
