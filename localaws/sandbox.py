"""Local Batch jobs isolated as containers are: bubblewrap (Debian's `bubblewrap`, the `bwrap` command).

On AWS a job runs in a container: its own file system, the image's code, its job role's keys, and
nothing of the host. A plain local process would see everything its user can: AIRFLOW_HOME (the
endpoint's client key pair, airflow.cfg's JWT and Fernet secrets, the metadata DB's socket), the
repository, other jobs' files. Inside the sandbox a job sees:

* the system's programs and libraries read-only (/usr and a few files of /etc: certificates, name
  resolution, users), and no other file of /etc (no /etc/shadow);
* the interpreter, the virtual environment and the worker code read-only (the image's layers);
* its own scratch folder (the working directory, HOME and /tmp), removed when the attempt ends;
* of a local DATA_ROOT, only what the job role may reach on S3 (config/batch_resources.json's
  `job_role`, the same spec that provisioning turns into the role's policy): its read prefixes
  read-only, its write prefixes writable; nothing else of DATA_ROOT (not the registry, not prep's
  manifests of other pipelines' inputs);
* the network (the endpoint on 127.0.0.1), as a container in host network mode would; its own PID,
  IPC and UTS namespaces; no capabilities.

Where bubblewrap is missing or the kernel refuses it namespaces, `isolation_problem()` says why; the
endpoint then says at start that jobs run unisolated (docs/local-aws.md says what that means).
"""
from __future__ import annotations

import functools
import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

#: /etc entries a job needs (TLS roots, name resolution, users and groups, time zone, linker cache); the rest
#: of /etc (shadow, the machine's own configuration) stays out of sight, as the host's /etc is from a container.
ETC_ENTRIES = ("ssl", "ca-certificates", "ca-certificates.conf", "pki", "resolv.conf", "hosts", "nsswitch.conf",
               "passwd", "group", "localtime", "timezone", "ld.so.cache", "ld.so.conf", "ld.so.conf.d",
               "alternatives", "mime.types")
#: Devices of a GPU compute environment, visible to jobs where the machine has them.
GPU_DEVICES = ("/dev/nvidia*", "/dev/dri")
#: The job's environment names the DATA_ROOT it works on (the house operator passes its own); only a local
#: folder is mounted, an s3:// root is reached through the endpoint under the job role's policy.
DATA_ROOT_VARIABLE = "DATA_ROOT"


ENV = shutil.which("env") or "/usr/bin/env"


class SandboxError(Exception):
    """The job cannot be started isolated (a bad DATA_ROOT in its environment, a broken job role spec)."""


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


@functools.lru_cache(maxsize=1)
def isolation_problem() -> str | None:
    """None where jobs can be isolated here, else why not (checked once, by starting `true` isolated)."""
    bwrap = bwrap_path()
    if bwrap is None:
        return ("bubblewrap is not installed (`apt-get install bubblewrap`, or `make venv` as root installs it): "
                "Batch jobs run as plain processes that can read whatever this user can, AIRFLOW_HOME's "
                "secrets and the endpoint's client keys included")
    true = shutil.which("true") or "/usr/bin/true"
    argv = [bwrap, *_base_arguments(), "--", true]
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"bubblewrap could not start: {exc}"
    if done.returncode != 0:
        return (f"bubblewrap cannot create namespaces here ({done.stderr.strip() or f'exit {done.returncode}'}): "
                "Batch jobs run as plain processes that can read whatever this user can")
    return None


def _base_arguments() -> list[str]:
    arguments = ["--die-with-parent", "--unshare-all", "--share-net", "--cap-drop", "ALL",
                 "--ro-bind", "/usr", "/usr", "--proc", "/proc", "--dev", "/dev"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):  # merged /usr: links; else the real folders
        path = Path("/") / name
        if path.is_symlink():
            arguments += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            arguments += ["--ro-bind", str(path), str(path)]
    for name in ETC_ENTRIES:
        arguments += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    return arguments


@dataclass(frozen=True)
class DataGrants:
    """What a job may read and write of a local DATA_ROOT: the job role's prefixes, as folders."""

    read: tuple[str, ...]
    write: tuple[str, ...]

    @classmethod
    def from_job_role(cls, role: dict) -> "DataGrants":
        def folders(key: str) -> tuple[str, ...]:
            found = []
            for prefix in role.get(key) or []:
                name = str(prefix).strip("/")
                if not str(prefix).endswith("/") or not name or ".." in name.split("/"):
                    raise SandboxError(f"config/batch_resources.json job_role.{key}: {prefix!r} is not a folder "
                                       "prefix such as \"outputs/\"; a local job can be given folders only")
                found.append(name)
            return tuple(found)

        return cls(read=folders("read_prefixes"), write=folders("write_prefixes"))


def load_job_role_grants() -> DataGrants:
    from localaws.repo import REPO

    spec = json.loads((REPO / "config" / "batch_resources.json").read_text())
    return DataGrants.from_job_role(spec["job_role"])


def image_paths() -> list[str]:
    """What a job's image holds, read-only: the interpreter, the virtual environment, the worker code."""
    paths = {os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix), sys.prefix}
    spec = importlib.util.find_spec("batch_worker")
    if spec is not None and spec.origin:
        paths.add(str(Path(spec.origin).resolve().parents[1]))  # the worker project (an editable install's source)
    return sorted(paths)


class JobSandbox:
    """Builds the command line that starts one job attempt isolated."""

    def __init__(self, grants: DataGrants, read_only: Iterable[str] | None = None, default_data_root: str = ""):
        self.grants = grants
        #: the DATA_ROOT of a job whose environment names none (the endpoint's own, as make up starts it)
        self.default_data_root = (os.path.abspath(default_data_root) if default_data_root and "://" not in default_data_root
                                  else default_data_root)
        self.read_only = list(read_only if read_only is not None else image_paths())
        self.bwrap = bwrap_path()

    def wrap(self, command: list[str], scratch: Path, env: dict[str, str],
             container: dict | None = None) -> tuple[list[str], dict[str, str]]:
        """(argv, env) that run `command` isolated with `scratch` as its own folder, and the host volumes of its job
        definition's `container` properties (`volumes` and `mountPoints`, as on AWS) mounted where it says."""
        if self.bwrap is None:
            raise SandboxError("bubblewrap is not installed")
        tmp = scratch / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        # /tmp first: the scratch folder, DATA_ROOT or the virtual environment may lie beneath it (a test's
        # folders, a clone in /tmp), and a later mount shows through an earlier one, not the other way round.
        arguments = [self.bwrap, *_base_arguments(), "--bind", str(tmp), "/tmp"]
        for path in self.read_only:
            arguments += ["--ro-bind", path, path]
        for pattern in GPU_DEVICES:
            for device in sorted(glob.glob(pattern)):
                arguments += ["--dev-bind", device, device]
        arguments += self._data_arguments(env.get(DATA_ROOT_VARIABLE) or self.default_data_root)
        arguments += host_volume_arguments(container or {})
        # the root that bwrap builds is read-only once built: a write anywhere else fails at once instead of vanishing
        arguments += ["--bind", str(scratch), str(scratch), "--remount-ro", "/", "--chdir", str(scratch)]
        env = {**env, "HOME": str(scratch), "TMPDIR": "/tmp"}
        # bwrap exports PWD for --chdir; a container's process starts without it, as the job's environment says
        return [*arguments, "--", ENV, "-u", "PWD", "--", *command], env

    def _data_arguments(self, data_root: str) -> list[str]:
        if not data_root or "://" in data_root:  # none, or s3://: reached through the endpoint, under the policy
            return []
        given = Path(os.path.normpath(data_root))
        if not given.is_absolute() or given.resolve() == Path("/"):
            raise SandboxError(f"the job's {DATA_ROOT_VARIABLE}={data_root!r} must be an absolute folder other than /")
        real = given.resolve()
        arguments: list[str] = []
        for name in (*self.grants.write, *(n for n in self.grants.read if n not in self.grants.write)):
            source = real / name
            writable = name in self.grants.write
            if writable:
                source.mkdir(parents=True, exist_ok=True)
            # the job names its files under DATA_ROOT as given (it may be a link): the folder under both names
            for target in dict.fromkeys([real / name, given / name]):
                arguments += ["--bind" if writable else "--ro-bind-try", str(source), str(target)]
        return arguments


def host_volume_arguments(container: dict) -> list[str]:
    """A job definition's host volumes (`volumes[].host.sourcePath`, `mountPoints`), as bwrap mounts.

    As on AWS Batch, only a job definition (registered with the client's key, never a job's) can mount a folder
    of the host into its jobs; a source that does not exist is an error, as a container's start is.
    """
    sources = {}
    for volume in container.get("volumes") or []:
        source = ((volume or {}).get("host") or {}).get("sourcePath")
        if volume.get("name") and source:
            sources[volume["name"]] = source
    arguments: list[str] = []
    for point in container.get("mountPoints") or []:
        source, target = sources.get(point.get("sourceVolume")), point.get("containerPath")
        if not source or not target:
            raise SandboxError(f"mount point {point!r} names no host volume of the job definition")
        if not os.path.isabs(source) or not os.path.isabs(target) or not os.path.exists(source):
            raise SandboxError(f"host volume {source!r} -> {target!r}: both must be absolute and the source must exist")
        arguments += ["--ro-bind" if point.get("readOnly") else "--bind", source, target]
    return arguments
