"""Command launchers the plugin adds to ``domainbed.command_launchers.REGISTRY``.

- ``cpu_parallel``: runs the sweep's commands in parallel lanes on one machine, splitting the CPU cores
  between them (DomainBed's ``local`` runs one at a time; ``multi_gpu`` needs GPUs). DomainBed's train commands
  are forked from a server process that has imported the train script once (``serve``), which
  saves each run DomainBed's import (~7 s on a CPU core: torch, torchvision, wilds); the script, its arguments
  and its outputs are those of ``python -m domainbed.scripts.train``. ``DOMAINBED_DIFFUSION_PRELOAD=0`` starts
  every command as its own process instead.
- ``slurm``: submits the commands as one SLURM job array with ``sbatch`` (one array task per command).
  Settings come from ``DOMAINBED_SLURM_*`` environment variables (see ``SlurmConfig``).
"""
import importlib.util
import json
import os
import runpy
import select
import shlex
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from typing import List


def default_lanes():
    """Parallel runs: DOMAINBED_DIFFUSION_LANES, else two (or the cores, if fewer)."""
    return max(1, int(os.environ.get("DOMAINBED_DIFFUSION_LANES", min(2, os.cpu_count() or 1))))


TRAIN_MODULE = "domainbed.scripts.train"


def _this_python(command):
    """DomainBed's jobs start with a bare ``python``: run them with this interpreter (same machine)."""
    return shlex.quote(sys.executable) + command[len("python"):] if command.startswith("python ") else command


def _train_arguments(command):
    """The train script's arguments if ``command`` is DomainBed's ``python -m domainbed.scripts.train ...``."""
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    return words[3:] if words[:3] == ["python", "-m", TRAIN_MODULE] else None


def _preloading():
    return os.environ.get("DOMAINBED_DIFFUSION_PRELOAD", "1") != "0" and hasattr(os, "fork")


def _run_forked(module, arguments):
    """In a child forked from ``serve``: run ``module`` as ``python -m`` would, exit with its status."""
    code = 1
    try:
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):  # as the subprocess lanes: the script keeps its own out.txt and err.txt
            os.dup2(devnull, fd)
        sys.argv = [importlib.util.find_spec(module).origin, *arguments]
        warnings.filterwarnings("ignore", f"'{module}' found in sys.modules", RuntimeWarning)  # preloaded on purpose
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:
        traceback.print_exc()  # to the script's err.txt when it got that far, as an uncaught error would
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def serve(module=TRAIN_MODULE):
    """The train server: import ``module`` once, then fork one child per job read from stdin to run it.

    Protocol, one JSON object per line: stdin ``{"id": .., "arguments": [..]}``, stdout ``{"id": .., "returncode":
    ..}``. Forking before any torch computation keeps the children's thread pools fresh."""
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever an import prints goes to stderr, never into the replies
    importlib.import_module(module)  # only its imports run: the script's body is under __main__
    children, buffer, reading = {}, b"", True
    while reading or children:
        if reading and select.select([0], [], [], 0.1)[0]:
            chunk = os.read(0, 1 << 16)
            reading = bool(chunk)
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                job = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    replies.close()
                    _run_forked(module, job["arguments"])
                children[pid] = job["id"]
        elif not reading:
            time.sleep(0.1)
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            print(json.dumps({"id": children.pop(pid), "returncode": os.waitstatus_to_exitcode(status)}),
                  file=replies, flush=True)


class _TrainServer:
    """The launcher's side of ``serve``: jobs in, return codes out, never blocking the lanes."""
    def __init__(self, env, module=TRAIN_MODULE):
        self.process = subprocess.Popen([sys.executable, "-c", "from domainbed_diffusion import launchers; "
                                         f"launchers.serve({module!r})"], env=env, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE)
        self.returncodes, self.jobs, self.buffer = {}, 0, b""

    def submit(self, arguments):
        self.jobs += 1
        try:
            self.process.stdin.write((json.dumps({"id": self.jobs, "arguments": arguments}) + "\n").encode())
            self.process.stdin.flush()
        except BrokenPipeError:
            self.process.wait()
            self.collect()  # raises, saying how to go on
        return _ServedRun(self, self.jobs)

    def collect(self):
        out = self.process.stdout.fileno()
        while select.select([out], [], [], 0)[0]:
            chunk = os.read(out, 1 << 16)
            if not chunk:
                break
            self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            reply = json.loads(line)
            self.returncodes[reply["id"]] = reply["returncode"]
        if self.process.poll() is not None and len(self.returncodes) < self.jobs:
            raise RuntimeError(f"the cpu_parallel train server exited with code {self.process.returncode} with runs "
                               "unfinished; rerun the sweep (finished runs are kept) with "
                               "DOMAINBED_DIFFUSION_PRELOAD=0 to start each run as its own process")

    def close(self):
        self.process.stdin.close()
        self.process.wait()


class _ServedRun:
    """A run forked by the train server, polled like a ``subprocess.Popen``."""
    def __init__(self, server, job):
        self.server, self.job = server, job

    def poll(self):
        self.server.collect()
        return self.server.returncodes.get(self.job)

    @property
    def returncode(self):
        return self.server.returncodes.get(self.job)


def cpu_parallel_launcher(commands, lanes=None, stream=None):
    """Run ``commands`` in ``lanes`` parallel processes with ``cores // lanes`` threads each."""
    lanes = lanes or default_lanes()
    threads = str(max(1, (os.cpu_count() or 1) // lanes))
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    preload = _preloading()
    jobs = [(command, _train_arguments(command) if preload else None) for command in commands]
    server = _TrainServer(env) if any(arguments is not None for _, arguments in jobs) else None

    def start(command, arguments):
        if arguments is not None:
            return server.submit(arguments)
        return subprocess.Popen(_this_python(command), shell=True, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    pending, running, done, failed = jobs, [], 0, 0
    start_time = time.time()
    try:
        while pending or running:
            while pending and len(running) < lanes:
                running.append(start(*pending.pop(0)))
            time.sleep(0.2)
            for proc in [p for p in running if p.poll() is not None]:
                running.remove(proc)
                done += 1
                failed += proc.returncode != 0
                print(f"[cpu_parallel] {done}/{len(commands)} runs finished ({failed} failed), "
                      f"{time.time() - start_time:.0f}s", file=stream, flush=True)
    finally:
        if server:
            server.close()
    return failed


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
    with open(commands_file, "w") as f:
        f.write("\n".join(c.replace("\n", " ") for c in commands) + "\n")
    script = os.path.join(config.dir, f"{config.job_name}-{stamp}.sbatch")
    with open(script, "w") as f:
        f.write(slurm_array_script(commands, config, commands_file))
    return script


def slurm_launcher(commands, config=None, submit=True):
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


REGISTRY = {"cpu_parallel": cpu_parallel_launcher, "slurm": slurm_launcher}
