"""The Dask recipes in deploy/dask/ agree with ``streamer classify`` and with Dask.

Every ``streamer classify`` command they contain parses with the command's own parser and
names absolute paths (workers resolve relative ones in their own working directory); the
worker and scheduler command lines parse with distributed's own CLI; the Kubernetes
workers and scheduler share image and volumes with the streamer's manifests; the SLURM
config is one worker per GPU with dask-jobqueue's key names; nothing secret is written
down. dask-jobqueue is not a dependency: the job-script check runs only where it is
installed.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import re
import shlex
import shutil
import stat
import subprocess
import tomllib
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from streamer.classify_cmd import add_arguments

ROOT = Path(__file__).resolve().parent.parent
DASK_DIR = ROOT / "deploy" / "dask"
JOBQUEUE = DASK_DIR / "jobqueue.yaml"
LAUNCHER = DASK_DIR / "slurm_classify.py"
SBATCH = DASK_DIR / "classify.sbatch"
MANIFEST = DASK_DIR / "daskcluster.yaml"
README = DASK_DIR / "README.md"
STREAMER_K8S = ROOT / "deploy" / "kubernetes"
yaml: Any = importlib.import_module("yaml")  # (no type stubs installed)

# dask-jobqueue 0.9's keys of a SLURM section (dask_jobqueue/jobqueue.yaml)
JOBQUEUE_SLURM_KEYS = {
    "name", "cores", "memory", "processes", "python", "interface", "death-timeout",
    "local-directory", "shared-temp-directory", "extra", "worker-command",
    "worker-extra-args", "shebang", "queue", "account", "walltime", "env-extra",
    "job-script-prologue", "job-script-epilogue", "job-cpu", "job-mem", "job-extra",
    "job-extra-directives", "job-directives-skip", "log-directory", "scheduler-options",
}  # fmt: skip
SECRET = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----"
    r"|(?i:password|passwd|token|secret|api[_-]?key)\s*[:=]\s*['\"]?[A-Za-z0-9/+_\-]{8,}"
    r"|AKIA[0-9A-Z]{16}"
)


def launcher() -> ModuleType:
    spec = importlib.util.spec_from_file_location("slurm_classify", LAUNCHER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def classify_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamer classify", add_help=False)
    add_arguments(p)
    return p


def manifest() -> dict[str, Any]:
    return {d["kind"]: d for d in yaml.safe_load_all(MANIFEST.read_text(encoding="utf-8"))}


def containers(cluster: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec = cluster["spec"]
    return {
        "worker": spec["worker"]["spec"]["containers"][0],
        "scheduler": spec["scheduler"]["spec"]["containers"][0],
    }


def readme_commands(marker: str) -> list[list[str]]:
    """The shell commands of the README's code blocks that contain ``marker`` (continued
    lines joined, comments dropped), as words."""
    text = README.read_text(encoding="utf-8")
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if marker in line:
                out.append(shlex.split(line))
    return out


def after(words: list[str], *head: str) -> list[str]:
    for i in range(len(words) - len(head) + 1):
        if tuple(words[i : i + len(head)]) == head:
            return words[i + len(head) :]
    raise AssertionError(f"{' '.join(head)!r} not in {words}")


# -- SLURM ----------------------------------------------------------------------------------


def test_jobqueue_config_is_one_gpu_worker_per_job_with_known_keys() -> None:
    cfg = yaml.safe_load(JOBQUEUE.read_text(encoding="utf-8"))
    slurm = cfg["jobqueue"]["slurm"]
    assert set(slurm) <= JOBQUEUE_SLURM_KEYS, set(slurm) - JOBQUEUE_SLURM_KEYS
    assert slurm["processes"] == 1  # one worker per job ...
    assert any(re.fullmatch(r"--(gres=gpu:1|gpus=1)", d) for d in slurm["job-extra-directives"])
    assert slurm["cores"] >= 1 and slurm["job-cpu"] >= slurm["cores"]
    assert Path(slurm["python"]).is_absolute() and slurm["python"].endswith("/bin/python")
    assert slurm["worker-command"] == "distributed.cli.dask_worker"
    assert re.fullmatch(r"\d+:\d\d:\d\d", slurm["walltime"])
    # TLS material and logs in a directory of the user's, not a shared /tmp
    for key in ("shared-temp-directory", "log-directory"):
        assert slurm[key].startswith(("$HOME/", "~/")), key


def test_launcher_adds_the_scheduler_and_refuses_relative_paths() -> None:
    mod = launcher()
    args = ["/data/runs/r1.h5", "/data/runs/r2.h5", "--model", "/m/default", "--out", "/o"]
    cmd = mod.classify_command(args, "tls://10.0.0.1:8786")
    assert cmd[1:4] == ["-m", "streamer", "classify"]
    parsed = classify_parser().parse_args(cmd[4:])
    assert parsed.scheduler == "tls://10.0.0.1:8786"
    assert [str(p) for p in parsed.runs] == args[:2]
    for bad in (
        ["runs/r1.h5", "--model", "/m", "--out", "/o"],
        ["/r1.h5", "--model", "models/default", "--out", "/o"],
        ["/r1.h5", "--model", "/m", "--out", "out"],
        ["/r1.h5", "--model", "/m", "--out", "/o", "--scheduler", "tcp://x:1"],
    ):
        with pytest.raises(SystemExit):
            mod.classify_command(bad, "tls://h:1")
    with pytest.raises(SystemExit):  # not a classify option
        mod.classify_command(["/r1.h5", "--no-such-option"], "tls://h:1")


def test_launcher_cpu_partition_options() -> None:
    mod = launcher()
    ns = argparse.Namespace(queue="cpu", account=None, walltime=None, cpu=16)
    opts = mod.cluster_options(ns)
    assert opts["job_extra_directives"] == [] and opts["queue"] == "cpu"
    assert opts["cores"] == opts["processes"] == opts["job_cpu"] == 16
    assert mod.cluster_options(argparse.Namespace(queue=None, account=None, walltime=None,
                                                  cpu=0)) == {}  # fmt: skip


def test_launcher_gives_the_client_tls_through_dask_config(tmp_path: Path) -> None:
    import dask.config

    class FakeSecurity:
        def get_tls_config_for_role(self, role: str) -> dict[str, str | None]:
            assert role == "client"
            pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
            return {"ca_file": pem, "cert": pem, "key": pem, "ciphers": None}

    env = launcher().write_client_tls(FakeSecurity(), tmp_path)
    # what a Dask client started with this environment reads (names matched as dask does)
    cfg = dask.config.update(copy.deepcopy(dask.config.config),
                             dask.config.collect(paths=[], env=env))  # fmt: skip
    assert dask.config.get("distributed.comm.require-encryption", config=cfg) is True
    for key in ("ca-file", "client.cert", "client.key"):
        f = dask.config.get(f"distributed.comm.tls.{key}", config=cfg)
        assert Path(f).parent == tmp_path, key
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o600


def test_launcher_job_script_with_dask_jobqueue(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:  # fmt: skip
    SLURMCluster = pytest.importorskip("dask_jobqueue").SLURMCluster
    import dask.config

    monkeypatch.setenv("HOME", str(tmp_path))
    mod = launcher()
    saved = copy.deepcopy(dask.config.config)
    try:
        mod.load_jobqueue_config(JOBQUEUE)
        with SLURMCluster(**mod.cluster_options(argparse.Namespace(
            queue=None, account=None, walltime=None, cpu=0))) as cluster:  # fmt: skip
            script = cluster.job_script()
    finally:  # the launcher writes into Dask's global config
        dask.config.config.clear()
        dask.config.config.update(saved)
    assert "#SBATCH --gres=gpu:1" in script and "--nthreads 4" in script
    assert f"#SBATCH -o {tmp_path}/.hitstream-dask/logs/" in script  # expanded, not $HOME
    assert "export HDF5_USE_FILE_LOCKING=FALSE" in script


def test_sbatch_driver_runs_the_launcher_with_absolute_paths() -> None:
    text = SBATCH.read_text(encoding="utf-8")
    if shutil.which("bash"):
        subprocess.run(["bash", "-n", str(SBATCH)], check=True)
    assert re.search(r"^#SBATCH --time=", text, flags=re.M)
    env = dict(re.findall(r"^([A-Z_]+)=(\S+)", text, flags=re.M))
    exec_line = " ".join(
        re.search(r"^exec .*?(?<!\\)$", text.replace("\\\n", " "), flags=re.M | re.S)
        .group(0)  # type: ignore[union-attr]
        .split()
    )
    for _ in range(3):  # $HITSTREAM inside MODEL
        for k, v in env.items():
            exec_line = exec_line.replace(f"${k}", v).replace(f"${{{k}}}", v)
    words = shlex.split(exec_line.replace('"$@"', "/data/runs/r0042.h5"))
    assert words[2].endswith("deploy/dask/slurm_classify.py")
    launcher().classify_command(after(words, "--"), "tls://h:1")  # parses, absolute


# -- Kubernetes ---------------------------------------------------------------------------


def test_daskcluster_runs_dask_from_the_hitstream_image() -> None:
    docs = manifest()
    cluster = docs["DaskCluster"]
    assert cluster["apiVersion"] == "kubernetes.dask.org/v1"
    c = containers(cluster)
    streamer = yaml.safe_load((STREAMER_K8S / "statefulset.yaml").read_text(encoding="utf-8"))
    image = streamer["spec"]["template"]["spec"]["containers"][0]["image"]
    assert c["worker"]["image"] == c["scheduler"]["image"] == image
    # the image's entrypoint is `streamer`: the `dask` command must replace it, and exist
    assert c["worker"]["command"] == ["dask", "worker"]
    assert c["scheduler"]["command"] == ["dask", "scheduler"]
    assert any(e.value == "dask.__main__:main" for e in entry_points(group="console_scripts",
                                                                  name="dask"))  # fmt: skip
    cli = {e.name: e for e in entry_points(group="dask_cli")}
    for role in ("worker", "scheduler"):
        ctx = cli[role].load().make_context(f"dask {role}", list(c[role]["args"]))
        if role == "worker":
            assert ctx.params["nthreads"] >= 1 and ctx.params["scheduler"] is None
        else:
            assert str(ctx.params["port"]) == "8786"
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert any(d.startswith("distributed") for d in deps["project"]["dependencies"])


def test_daskcluster_volumes_gpu_and_privacy() -> None:
    docs = manifest()
    cluster = docs["DaskCluster"]
    c = containers(cluster)
    mounts = {m["mountPath"]: m for m in c["worker"]["volumeMounts"]}
    assert c["scheduler"]["volumeMounts"] == c["worker"]["volumeMounts"]
    assert mounts["/models"].get("readOnly") and mounts["/data/runs"].get("readOnly")
    assert not mounts["/data/out"].get("readOnly")
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in cluster["spec"]["worker"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    known = {d["metadata"]["name"] for d in yaml.safe_load_all(
        (STREAMER_K8S / "pvc.yaml").read_text(encoding="utf-8"))}  # fmt: skip
    known.add(docs["PersistentVolumeClaim"]["metadata"]["name"])
    assert set(claims.values()) <= known
    res = c["worker"]["resources"]
    assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"] == 1
    assert cluster["spec"]["scheduler"]["service"]["type"] == "ClusterIP"
    policy = docs["NetworkPolicy"]["spec"]
    label = {"dask.org/cluster-name": cluster["metadata"]["name"]}
    assert policy["podSelector"]["matchLabels"] == label
    assert {"podSelector": {"matchLabels": label}} in policy["ingress"][0]["from"]


# -- README and secrets ---------------------------------------------------------------------


def test_readme_classify_commands_parse_and_use_the_shared_paths() -> None:
    cluster = manifest()["DaskCluster"]
    mounts = [m["mountPath"] for m in containers(cluster)["worker"]["volumeMounts"]]
    k8s = [w for w in readme_commands("streamer classify") if "--scheduler" in w]
    assert len(k8s) >= 2  # kubectl exec and port-forward
    for words in k8s:
        args = classify_parser().parse_args(after(words, "streamer", "classify"))
        assert args.scheduler.startswith(("tcp://", "tls://"))
        for p in [*args.runs, args.model, args.out]:
            assert any(str(p).startswith(m + "/") for m in mounts), p
    slurm = readme_commands("slurm_classify.py")
    assert slurm
    for words in slurm:
        launcher().classify_command(after(words, "--"), "tls://h:1")
    text = README.read_text(encoding="utf-8")
    assert "pickle" in text and "TLS" in text
    assert "pip install dask-jobqueue" in text and "dask-kubernetes-operator" in text


def test_no_secrets_in_the_recipes() -> None:
    for path in sorted(DASK_DIR.iterdir()):
        text = path.read_text(encoding="utf-8")
        assert not SECRET.search(text), (path.name, SECRET.search(text))
    assert "kind: Secret" not in MANIFEST.read_text(encoding="utf-8")
