"""What the Snakefile does at parse time besides planning: how jobs start Python, and the
stale locks a SIGKILLed run leaves behind."""

from __future__ import annotations

import fcntl
import os
import shlex
import sys
from pathlib import Path


def python_command(workflow, replace_shell: bool = False) -> str:
    """How jobs start Python with the `pipeline` package importable from any workdir.

    Without conda, the interpreter running Snakemake (a venv need not be activated);
    with --sdm conda, the `python` that the rule's environment puts first on PATH.
    replace_shell: `exec` it, so that Python is the job's process itself, not a child of
    its shell (what pipeline.run.lifetime needs to see Snakemake die).
    """
    methods = {m.name for m in workflow.deployment_settings.deployment_method}
    python = "python" if "CONDA" in methods else shlex.quote(sys.executable)
    return f"PYTHONPATH={shlex.quote(workflow.basedir)} {'exec ' if replace_shell else ''}{python}"


_RUN_GUARD: list[int] = []  # the open guard file: held (flocked) for this Snakemake's lifetime


def clear_stale_lock(workflow, workdir: Path = Path(".")) -> str | None:
    """A Snakemake killed by SIGKILL leaves its working-directory lock behind, and the next
    run would stop with "Directory cannot be locked". Every main Snakemake process of this
    workflow holds a flock on .snakemake/llm-infer-bench.run while it lives (the kernel drops
    it however the process ends). Whoever gets that flock knows that no run of ours is alive
    here; a lock left in .snakemake/locks is then stale unless another Snakemake process
    (another Snakefile's run) works in this directory: stale locks are removed, and said so;
    otherwise the message says to use `snakemake --unlock` if that run is not alive.

    Returns the message, or None when there was nothing to do. Jobs' own Snakemake processes
    (a cluster job, a subprocess) never touch it.
    """
    if not workflow.is_main_process:
        return None
    state = workdir / ".snakemake"
    state.mkdir(exist_ok=True)
    fd = os.open(state / "llm-infer-bench.run", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # another run of this workflow is alive here (or no flock on this filesystem)
        os.close(fd)
        return None
    _RUN_GUARD.append(fd)
    locks = sorted((state / "locks").glob("*.lock")) if (state / "locks").is_dir() else []
    if not locks:
        return None
    others = live_snakemake_pids(workdir)
    if others:  # e.g. another Snakefile run in this directory: its locks are not ours to remove
        return (
            f"llm-infer-bench: Snakemake lock files are held in {state / 'locks'} and Snakemake process(es) "
            f"{', '.join(map(str, others))} run in this directory; if none of them is a live run, "
            "`snakemake --unlock` clears the locks"
        )
    for lock in locks:
        lock.unlink(missing_ok=True)
    return (
        f"llm-infer-bench: removed {len(locks)} stale Snakemake lock file(s) left by an interrupted run "
        "(no Snakemake process runs in this directory); its finished cells are kept"
    )


def live_snakemake_pids(workdir: Path, me: int | None = None) -> list[int]:
    """Other processes whose command line runs snakemake and whose working directory is workdir
    (this process and its ancestors excluded)."""
    me = me or os.getpid()
    mine, pid = {me}, me
    while pid > 1:  # our own parents (a wrapper shell, `python -m snakemake`) are not others
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        mine.add(pid)
    here = Path(workdir).resolve()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:
            continue
        if b"snakemake" in cmdline and cwd == here:
            found.append(int(entry.name))
    return sorted(found)


def check_machine(schedule, workflow, conf_dir: Path) -> None:
    """Planning-time checks of a local run against this machine: the GPUs its jobs ask, and a
    GPU datasheet asked for by name. A cluster executor (--jobs, no --cores) runs elsewhere."""
    if workflow.nodes is not None or not workflow.is_main_process:
        return
    from pipeline.analysis.roofline import check_requested_hardware
    from pipeline.config import ConfigError
    from pipeline.engines.device import gpus_seen
    from pipeline.plan.conf import ConfTree

    tree = ConfTree(conf_dir, list(schedule.plan.overrides))
    try:
        check_requested_hardware(tree.requested_hardware(), gpus_seen(), tree.hardware_entries())
    except ConfigError as exc:
        sys.exit(f"llm-infer-bench: {exc}")
    _check_gpus(schedule)


def _check_gpus(schedule) -> None:
    from pipeline.plan.matrix import PlanError
    from pipeline.plan.schedule import check_local_gpus
    from pipeline.run.gpu_slots import SLOTS_ENV, configured_slots

    if not schedule.gpus:
        return
    if os.environ.get(SLOTS_ENV, "").strip():
        source = SLOTS_ENV
    else:
        source = "CUDA_VISIBLE_DEVICES" if os.environ.get("CUDA_VISIBLE_DEVICES") is not None else "nvidia-smi"
    try:
        check_local_gpus(schedule.gpus, configured_slots(), source)
    except PlanError as exc:
        sys.exit(f"llm-infer-bench: {exc}")
