#!/usr/bin/env python3
"""A real one-node SLURM cluster on 127.0.0.1, for the cluster tests, CI and trying profiles/slurm.

    python .ci/local_slurm.py start DIR [--gpus 2]   # prints the env file to source
    source DIR/env.sh && sbatch --wrap hostname && sacct
    python .ci/local_slurm.py stop DIR

Needs Debian's packages (CI installs them; `make setup-slurm`):
    apt-get install -y --no-install-recommends slurmctld slurmd slurmdbd slurm-client mariadb-server

Everything lives under DIR: slurm.conf (SLURM_CONF points at it), state, logs, pid files.
Daemons: a private MariaDB (TCP on a free port, no grant tables: it is reachable from this
machine only) for slurmdbd, so that `sacct` works as on a real cluster (the benchmark's
submit-to-start figures and the tests' one-job-per-cell check read it); slurmctld; slurmd
with `--gpus` fake GPUs (GRES backed by stand-in device files: SLURM allocates them and sets
CUDA_VISIBLE_DEVICES per job exactly as with real ones). No munge: auth/none.
An `srun` wrapper in DIR/bin restores SLURM_CONF, which the job-side Snakemake plugin
(snakemake-executor-plugin-slurm-jobstep) strips from the environment before calling srun.
"""

from __future__ import annotations

import argparse
import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

DAEMONS = ("slurmd", "slurmctld", "slurmdbd", "mariadbd")  # stop order
CLUSTER = "bench"
NODE = "localnode"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024 - 1024  # leave the OS a GiB
    raise RuntimeError("no MemTotal in /proc/meminfo")


def wait_for(check, what: str, log: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            tail = log.read_text()[-3000:] if log.is_file() else "(no log)"
            raise SystemExit(f"local_slurm: {what} did not come up in {timeout_s:g}s; {log}:\n{tail}")
        time.sleep(0.2)


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def write_configs(root: Path, gpus: int, cpus: int, user: str) -> dict[str, str]:
    for sub in ("state", "spool", "log", "run", "bin", "dev", "mysql"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ports = {name: free_port() for name in ("ctld", "slurmd", "dbd", "mysql")}
    gres = f" Gres=gpu:{gpus}" if gpus else ""
    (root / "slurm.conf").write_text(
        f"""# written by .ci/local_slurm.py: a one-node cluster on 127.0.0.1
ClusterName={CLUSTER}
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ports["ctld"]}
SlurmdPort={ports["slurmd"]}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/none
CredType=cred/none
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# without it a job that asks no memory takes the whole node and jobs serialize
DefMemPerCPU=512
ReturnToService=2
SchedulerType=sched/backfill
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={ports["dbd"]}
JobCompType=jobcomp/none
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment
{"GresTypes=gpu" if gpus else ""}
NodeName={NODE} NodeHostname={socket.gethostname()} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb()}{gres}
PartitionName=debug Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
"""
    )
    devices = []
    for index in range(gpus):  # stand-ins: slurmd wants character devices; /dev/null is one
        device = root / "dev" / f"nvidia{index}"
        device.unlink(missing_ok=True)
        device.symlink_to("/dev/null")
        devices.append(f"Name=gpu File={device}")
    (root / "gres.conf").write_text("\n".join(devices) + "\n")
    dbd = root / "slurmdbd.conf"
    dbd.write_text(
        f"""AuthType=auth/none
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={ports["dbd"]}
SlurmUser={user}
PidFile={root}/run/slurmdbd.pid
LogFile={root}/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={ports["mysql"]}
StorageUser={user}
StorageLoc=slurm_acct_db
"""
    )
    dbd.chmod(0o600)  # slurmdbd refuses a readable config
    srun = root / "bin" / "srun"
    real_srun = shutil.which("srun") or "/usr/bin/srun"
    srun.write_text(f'#!/bin/sh\nexport SLURM_CONF="{root}/slurm.conf"\nexec {real_srun} "$@"\n')
    srun.chmod(0o755)
    env = {"SLURM_CONF": str(root / "slurm.conf"), "PATH": f"{root}/bin:{os.environ.get('PATH', '')}"}
    (root / "env.sh").write_text(f'export SLURM_CONF="{root}/slurm.conf"\nexport PATH="{root}/bin:$PATH"\n')
    (root / "ports").write_text(" ".join(f"{k}={v}" for k, v in ports.items()) + "\n")
    return {**{k: str(v) for k, v in ports.items()}, **env}


def start_mariadb(root: Path, port: int, user: str) -> None:
    data = root / "mysql"
    log = root / "log" / "mariadb.log"
    if not (data / "mysql").is_dir():
        install = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
        if install is None:
            raise SystemExit("local_slurm: MariaDB is missing (apt-get install mariadb-server)")
        subprocess.run(
            [install, f"--datadir={data}", f"--user={user}", "--auth-root-authentication-method=normal"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=open(log, "a"),  # noqa: SIM115 - handed to the child
        )
    server = shutil.which("mariadbd", path="/usr/sbin:/usr/bin") or shutil.which("mysqld", path="/usr/sbin:/usr/bin")
    subprocess.Popen(
        [
            server,
            "--no-defaults",
            f"--datadir={data}",
            f"--user={user}",
            "--bind-address=127.0.0.1",
            f"--port={port}",
            f"--socket={root}/run/mysqld.sock",
            f"--pid-file={root}/run/mariadbd.pid",
            "--skip-grant-tables",  # reachable from 127.0.0.1 only; slurmdbd logs in without a password
            "--innodb-buffer-pool-size=32M",
            "--innodb-log-file-size=16M",
            f"--log-error={log}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    wait_for(lambda: port_open(port), "MariaDB", log)


def start(root: Path, gpus: int, cpus: int) -> None:
    root = root.resolve()
    if any(pid_of(root, d) for d in DAEMONS):
        raise SystemExit(f"local_slurm: a cluster is already running in {root} (stop it first)")
    for tool in ("slurmctld", "slurmd", "slurmdbd", "sbatch", "sacct"):
        if not shutil.which(tool, path=f"/usr/sbin:/usr/bin:{os.environ.get('PATH', '')}"):
            raise SystemExit(f"local_slurm: {tool} is missing (apt-get install slurmctld slurmd slurmdbd slurm-client)")
    user = getpass.getuser()
    env = write_configs(root, gpus, cpus, user)
    daemon_env = {**os.environ, "SLURM_CONF": env["SLURM_CONF"]}
    started = time.monotonic()
    start_mariadb(root, int(env["mysql"]), user)
    subprocess.run(["slurmdbd"], check=True, env=daemon_env)  # reads slurmdbd.conf beside SLURM_CONF
    wait_for(lambda: port_open(int(env["dbd"])), "slurmdbd", root / "log" / "slurmdbd.log")
    subprocess.run(["slurmctld"], check=True, env=daemon_env)
    wait_for(lambda: port_open(int(env["ctld"])), "slurmctld", root / "log" / "slurmctld.log")
    subprocess.run(["slurmd", "-N", NODE], check=True, env=daemon_env)

    def node_idle() -> bool:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], env=daemon_env, capture_output=True, text=True).stdout
        return out.strip() == "idle"

    wait_for(node_idle, "the node (sinfo: idle)", root / "log" / "slurmd.log")
    print(
        f"local_slurm: cluster {CLUSTER} up in {time.monotonic() - started:.1f}s ({cpus} CPUs, {gpus} fake GPUs); "
        f"source {root}/env.sh",
        file=sys.stderr,
    )
    print(root / "env.sh")


def pid_of(root: Path, daemon: str) -> int | None:
    try:
        pid = int((root / "run" / f"{daemon}.pid").read_text().split()[0])
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, IndexError, ProcessLookupError):
        return None
    return pid


def stop(root: Path) -> None:
    root = root.resolve()
    for daemon in DAEMONS:
        pid = pid_of(root, daemon)
        if pid is None:
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while pid_of(root, daemon) == pid and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_of(root, daemon) == pid:
            os.kill(pid, signal.SIGKILL)
    print(f"local_slurm: stopped the cluster in {root}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("start", help="write the configs and start the daemons; prints the env file")
    up.add_argument("dir", type=Path)
    up.add_argument("--gpus", type=int, default=2, help="fake GPUs on the node (GRES gpu)")
    up.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPUs the node declares")
    down = sub.add_parser("stop", help="stop the daemons started in DIR")
    down.add_argument("dir", type=Path)
    args = parser.parse_args(argv)
    if args.command == "start":
        start(args.dir, args.gpus, args.cpus)
    else:
        stop(args.dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
