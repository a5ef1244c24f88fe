"""The ``slurm`` launcher: a sweep's (or the generator's) commands as one SLURM job array submitted with
``sbatch``, one array task per command. Settings come from ``DOMAINBED_SLURM_*`` environment variables
(``SlurmConfig``).
"""
import os
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from typing import List

from . import this_python


@dataclass
class SlurmConfig:
    """One SLURM job array; every field has a ``DOMAINBED_SLURM_<FIELD>`` environment variable."""
    partition: str = ""
    account: str = ""
    gpus: int = 1
    cpus: int = 8
    mem: str = "32G"
    time: str = "24:00:00"
    max_parallel: int = 0  # 0: no limit on array tasks running at once
    job_name: str = "domainbed"
    dir: str = "slurm_jobs"
    extra: List[str] = field(default_factory=list)  # raw "#SBATCH ..." options, ";"-separated in the variable

    @classmethod
    def from_env(cls, environ=None):
        environ = os.environ if environ is None else environ
        config = cls()
        for name, value in vars(cls()).items():
            raw = environ.get(f"DOMAINBED_SLURM_{name.upper()}")
            if raw is None:
                continue
            if isinstance(value, int):
                setattr(config, name, int(raw))
            elif isinstance(value, list):
                setattr(config, name, [s.strip() for s in raw.split(";") if s.strip()])
            else:
                setattr(config, name, raw)
        return config


def slurm_array_script(commands, config, commands_file):
    """The sbatch script of a job array whose task ``i`` runs line ``i + 1`` of ``commands_file``."""
    n = len(commands)
    array = f"0-{n - 1}" + (f"%{config.max_parallel}" if config.max_parallel else "")
    lines = ["#!/bin/bash",
             f"#SBATCH --job-name={config.job_name}",
             f"#SBATCH --array={array}",
             f"#SBATCH --cpus-per-task={config.cpus}",
             f"#SBATCH --mem={config.mem}",
             f"#SBATCH --time={config.time}",
             f"#SBATCH --output={os.path.join(config.dir, 'logs', '%A_%a.out')}"]
    if config.gpus:
        lines.append(f"#SBATCH --gpus-per-task={config.gpus}")
    if config.partition:
        lines.append(f"#SBATCH --partition={config.partition}")
    if config.account:
        lines.append(f"#SBATCH --account={config.account}")
    lines += [e if e.startswith("#SBATCH") else f"#SBATCH {e}" for e in config.extra]
    lines += ["set -euo pipefail",
              f"cd {shlex.quote(os.getcwd())}",
              f'command=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {shlex.quote(commands_file)})',
              'echo "$command"',
              'eval "$command"']
    return "\n".join(lines) + "\n"


def write_slurm_array(commands, config=None):
    """Write the commands file and the array script under ``config.dir``; returns the script's path."""
    config = config or SlurmConfig.from_env()
    if not commands:
        raise ValueError("no commands to submit")
    os.makedirs(os.path.join(config.dir, "logs"), exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    commands_file = os.path.abspath(os.path.join(config.dir, f"{config.job_name}-{stamp}.commands"))
    with open(commands_file, "w") as f:  # this interpreter, not the compute node's first python on PATH
        f.write("\n".join(this_python(c).replace("\n", " ") for c in commands) + "\n")
    script = os.path.join(config.dir, f"{config.job_name}-{stamp}.sbatch")
    with open(script, "w") as f:
        f.write(slurm_array_script(commands, config, commands_file))
    return script


def launcher(commands, config=None, submit=True):
    """Submit ``commands`` as one job array; with ``submit=False`` only write it. Returns the script path."""
    script = write_slurm_array(commands, config)
    if submit:
        out = subprocess.run(["sbatch", script], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"sbatch {script} failed: {out.stderr.strip()}")
        print(out.stdout.strip())
    else:
        print(f"wrote {script} (not submitted)")
    return script
