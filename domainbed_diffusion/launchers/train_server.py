"""The train server: a process that imports DomainBed's train script once and forks one child per run.

Each run of a sweep pays DomainBed's import (torch, torchvision, wilds) when it starts as its own process; a child
forked from a process that already imported the script does not. The child runs the stock script with ``runpy``
as ``python -m domainbed.scripts.train`` would: its own arguments, ``out.txt``, ``err.txt`` and exit status.
Forking happens before any torch computation, so the children's thread pools are fresh. ``cpu_parallel`` is its
user; ``DOMAINBED_DIFFUSION_PRELOAD=0`` turns it off.
"""
import importlib
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

TRAIN_MODULE = "domainbed.scripts.train"


def enabled():
    return os.environ.get("DOMAINBED_DIFFUSION_PRELOAD", "1") != "0" and hasattr(os, "fork")


def train_arguments(command):
    """The train script's arguments if ``command`` is DomainBed's ``python -m domainbed.scripts.train ...``."""
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    return words[3:] if words[:3] == ["python", "-m", TRAIN_MODULE] else None


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


class TrainServer:
    """The launcher's side of ``serve``: jobs in, return codes out, never blocking the lanes."""
    def __init__(self, env, module=TRAIN_MODULE):
        self.process = subprocess.Popen([sys.executable, "-c", "from domainbed_diffusion.launchers import "
                                         f"train_server; train_server.serve({module!r})"], env=env, stdin=subprocess.PIPE,
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
        return ServedRun(self, self.jobs)

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


class ServedRun:
    """A run forked by the train server, polled like a ``subprocess.Popen``."""
    def __init__(self, server, job):
        self.server, self.job = server, job

    def poll(self):
        self.server.collect()
        return self.server.returncodes.get(self.job)

    @property
    def returncode(self):
        return self.server.returncodes.get(self.job)
