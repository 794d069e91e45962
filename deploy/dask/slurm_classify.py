"""Run ``streamer classify`` on SLURM: start Dask workers as SLURM jobs (dask-jobqueue),
classify on them, stop them.

    python deploy/dask/slurm_classify.py --jobs 8 -- \\
        /data/runs/r0042.h5 /data/runs/r0043.h5 \\
        --model /shared/hitstream/models/default --out /data/reclassified/v7

Everything after ``--`` is ``streamer classify``'s own arguments (absolute paths: the
workers run elsewhere); this script adds ``--scheduler``. It reads the worker settings from
``jobqueue.yaml`` beside it (``--jobqueue-config``; partition, account and walltime can be
overridden here), starts a SLURMCluster whose scheduler runs in this process, submits
``--jobs`` worker jobs (one GPU each, or ``--cpu``), waits for the first worker, runs
``python -m streamer classify ... --scheduler ADDRESS`` and cancels the jobs when it ends
(also on Ctrl-C and SIGTERM). Exit status: that of ``streamer classify``.

Traffic between scheduler, workers and the classify client is TLS with a temporary
certificate made for this run (the ``cryptography`` package): Dask sends task payloads as
pickles, so anyone who can reach an unencrypted scheduler can run code as you. ``--no-tls``
only on a network that is yours alone.

Needs, where it runs: the hitstream environment plus ``pip install dask-jobqueue
cryptography`` (not dependencies of hitstream). ``--dry-run`` prints the job script and
the classify command without submitting anything.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TLS_ENV = {  # dask config, as environment variables of the classify client
    "ca_file": "DASK_DISTRIBUTED__COMM__TLS__CA_FILE",
    "cert": "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT",
    "key": "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY",
}


def classify_command(classify_args: list[str], scheduler: str) -> list[str]:
    """``python -m streamer classify ARGS --scheduler SCHEDULER``, after checking ARGS with
    the command's own parser: no ``--scheduler`` of their own, absolute paths only."""
    from streamer.classify_cmd import add_arguments

    parser = argparse.ArgumentParser(prog="streamer classify", add_help=False)
    add_arguments(parser)
    args = parser.parse_args(classify_args)
    if "--scheduler" in classify_args or any(a.startswith("--scheduler=") for a in classify_args):
        raise SystemExit("slurm_classify.py: leave --scheduler out; the cluster's is added")
    paths = [*args.runs, args.model, args.out]
    paths += [p for p in (args.compare, args.config) if p is not None]
    relative = [str(p) for p in paths if not Path(p).is_absolute()]
    if relative:
        raise SystemExit(
            "slurm_classify.py: give absolute paths (the workers resolve relative ones in "
            f"their own working directory): {', '.join(relative)}"
        )
    return [sys.executable, "-m", "streamer", "classify", *classify_args, "--scheduler", scheduler]


def load_jobqueue_config(path: Path) -> None:
    """jobqueue.yaml into Dask's config; its log and TLS directories with ``~`` and
    ``$VARS`` expanded (dask-jobqueue writes #SBATCH lines as they are) and created
    private (mode 0700)."""
    import dask.config

    yaml: Any = importlib.import_module("yaml")  # dask's own dependency
    with open(path, encoding="utf-8") as fh:
        dask.config.update(dask.config.config, yaml.safe_load(fh), priority="new")
    for key in ("log-directory", "shared-temp-directory"):
        value = dask.config.get(f"jobqueue.slurm.{key}", None)
        if value:
            expanded = os.path.expanduser(os.path.expandvars(str(value)))
            os.makedirs(expanded, mode=0o700, exist_ok=True)
            dask.config.set({f"jobqueue.slurm.{key}": expanded})


def cluster_options(args: argparse.Namespace) -> dict[str, Any]:
    """SLURMCluster keyword arguments that override jobqueue.yaml."""
    opts: dict[str, Any] = {}
    if args.queue:
        opts["queue"] = args.queue
    if args.account:
        opts["account"] = args.account
    if args.walltime:
        opts["walltime"] = args.walltime
    if args.cpu:  # no GPU; one single-threaded worker process per booked core
        opts |= {"job_extra_directives": [], "cores": args.cpu, "processes": args.cpu,
                 "job_cpu": args.cpu}  # fmt: skip
    return opts


def write_client_tls(security: Any, directory: Path) -> dict[str, str]:
    """The client's certificate, key and CA as files (mode 0600) and the environment that
    makes a Dask client in another process use them."""
    env = {"DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True"}
    for key, value in security.get_tls_config_for_role("client").items():
        if key not in TLS_ENV or value is None:
            continue
        path = directory / f"client-{key}.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(value)
        env[TLS_ENV[key]] = str(path)
    return env


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        raise SystemExit("usage: slurm_classify.py [options] -- RUN... --model M --out DIR")
    split = argv.index("--")
    ours, classify_args = argv[:split], argv[split + 1 :]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=4, help="worker jobs to submit")
    p.add_argument("--jobqueue-config", type=Path, default=HERE / "jobqueue.yaml")
    p.add_argument("--queue", help="SLURM partition (overrides jobqueue.yaml)")
    p.add_argument("--account", help="SLURM account (overrides jobqueue.yaml)")
    p.add_argument("--walltime", help="worker jobs' time limit (overrides jobqueue.yaml)")
    p.add_argument("--cpu", type=int, metavar="CORES", default=0,
                   help="CPU partition: CORES single-threaded workers per job, no GPU")  # fmt: skip
    p.add_argument("--start-timeout", type=float, default=3600.0,
                   help="seconds to wait in the queue for the first worker")  # fmt: skip
    p.add_argument("--no-tls", action="store_true", help="plain TCP (a private network only)")
    p.add_argument("--dry-run", action="store_true", help="print the job script and stop")
    args = p.parse_args(ours)
    classify_command(classify_args, "tls://scheduler:0")  # check the arguments first

    from dask.distributed import Client
    from distributed.security import Security

    try:
        SLURMCluster = importlib.import_module("dask_jobqueue").SLURMCluster
    except ImportError:
        raise SystemExit(
            "slurm_classify.py: pip install dask-jobqueue cryptography (where it runs)"
        ) from None

    load_jobqueue_config(args.jobqueue_config)
    opts = cluster_options(args)
    security = None if args.no_tls else Security.temporary()
    if args.dry_run:  # the job script only (without the TLS options): nothing is submitted
        with SLURMCluster(**opts) as cluster:
            print(cluster.job_script())
        print(" ".join(classify_command(classify_args, "tls://<scheduler>:<port>")))
        return 0
    # scancel and the driver job's time limit send SIGTERM: cancel the worker jobs and
    # delete the TLS files on the way out, as after Ctrl-C
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    private = Path(tempfile.mkdtemp(prefix="hitstream-classify-"))  # mode 0700
    cluster = SLURMCluster(security=security, **opts)
    try:
        cluster.scale(jobs=args.jobs)
        print(f"Dask scheduler {cluster.scheduler_address}, dashboard {cluster.dashboard_link}; "
              f"{args.jobs} worker job(s) submitted", flush=True)  # fmt: skip
        with Client(cluster, security=security) as client:
            client.wait_for_workers(1, timeout=args.start_timeout)
        env = dict(os.environ)
        if security is not None:
            env |= write_client_tls(security, private)
        cmd = classify_command(classify_args, cluster.scheduler_address)
        return subprocess.run(cmd, env=env, check=False).returncode
    finally:
        cluster.close()
        shutil.rmtree(private, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
