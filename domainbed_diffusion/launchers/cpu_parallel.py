"""The ``cpu_parallel`` launcher: a sweep's commands in parallel lanes on one machine, the CPU cores split between
them (DomainBed's ``local`` runs one at a time; ``multi_gpu`` needs GPUs). DomainBed's train commands are
forked from the train server (``train_server``); any other command starts as its own process.
"""
import os
import shlex
import subprocess
import sys
import time

from . import train_server


def default_lanes():
    """Parallel runs: DOMAINBED_DIFFUSION_LANES, else two (or the cores, if fewer)."""
    return max(1, int(os.environ.get("DOMAINBED_DIFFUSION_LANES", min(2, os.cpu_count() or 1))))


def _this_python(command):
    """DomainBed's jobs start with a bare ``python``: run them with this interpreter (same machine)."""
    return shlex.quote(sys.executable) + command[len("python"):] if command.startswith("python ") else command


def _generates_online(command):
    """Whether ``command`` trains an algorithm that runs a diffusion model inside its steps (``GENERATES_ONLINE``)."""
    arguments = train_server.train_arguments(command) or []
    name = arguments[arguments.index("--algorithm") + 1] if "--algorithm" in arguments[:-1] else None
    if name is None:
        return False
    try:
        from .. import algorithms
    except ImportError:  # no DomainBed here: nothing to rank by
        return False
    return bool(getattr(getattr(algorithms, name, None), "GENERATES_ONLINE", False))


def longest_first(commands):
    """The runs that generate online first, the rest in the sweep's order: the longest runs do not end the sweep
    with one lane idle (DomainBed's sweep shuffles its jobs)."""
    return sorted(commands, key=lambda command: not _generates_online(command))


def launcher(commands, lanes=None, stream=None):
    """Run ``commands`` in ``lanes`` parallel processes with ``cores // lanes`` threads each, longest first."""
    lanes = lanes or default_lanes()
    threads = str(max(1, (os.cpu_count() or 1) // lanes))
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    preload = train_server.enabled()
    jobs = [(command, train_server.train_arguments(command) if preload else None)
            for command in longest_first(commands)]
    server = train_server.TrainServer(env) if any(arguments is not None for _, arguments in jobs) else None

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
