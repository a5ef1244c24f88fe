"""The ``cpu_parallel`` launcher: a sweep's commands in parallel lanes on one machine, the CPU cores split between
them (DomainBed's ``local`` runs one at a time; ``multi_gpu`` needs GPUs). DomainBed's train commands are
forked from the train server (``train_server``); any other command starts as its own process.
"""
import os
import shlex
import subprocess
import sys
import time

from . import this_python, train_server


def default_lanes():
    """Parallel runs: DOMAINBED_DIFFUSION_LANES, else two (or the cores, if fewer)."""
    return max(1, int(os.environ.get("DOMAINBED_DIFFUSION_LANES", min(2, os.cpu_count() or 1))))


def _generates_online(arguments):
    """Whether train ``arguments`` (``train_server.train_arguments``; None for another command) train an algorithm
    whose catalogue entry runs a diffusion model inside its steps (``Entry.generates_online``)."""
    arguments = arguments or []
    name = arguments[arguments.index("--algorithm") + 1] if "--algorithm" in arguments[:-1] else None
    if name is None:
        return False
    from .. import catalogue  # at call time: registration imports this module while it loads
    entry = catalogue.entry(name)
    return bool(entry and entry.generates_online)


def _run_folder(command):
    """A train command's ``--output_dir`` (where its err.txt says why it failed), or the command itself."""
    words = shlex.split(command)
    return words[words.index("--output_dir") + 1] if "--output_dir" in words[:-1] else command


def next_run(online, online_running, lanes):
    """Index of the pending run to start (``online[i]``: run i generates online): the longest runs first, but in at
    most half the lanes while other runs are pending, since two of them side by side slow each other down."""
    first_online = next((i for i, o in enumerate(online) if o), None)
    first_other = next((i for i, o in enumerate(online) if not o), None)
    if first_online is not None and (online_running < max(1, lanes // 2) or first_other is None):
        return first_online
    return first_other


def launcher(commands, lanes=None, stream=None):
    """Run ``commands`` in ``lanes`` parallel processes with ``cores // lanes`` threads each, in ``next_run``'s
    order (DomainBed's sweep hands them shuffled)."""
    lanes = lanes or default_lanes()
    threads = str(max(1, (os.cpu_count() or 1) // lanes))
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    preload = train_server.enabled()
    parsed = [(command, train_server.train_arguments(command)) for command in commands]
    pending = [(command, arguments if preload else None, _generates_online(arguments)) for command, arguments in parsed]
    server = train_server.TrainServer(env) if any(arguments is not None for _, arguments, _ in pending) else None

    folders = {}

    def start(command, arguments, online):
        if arguments is not None:
            proc = server.submit(arguments)
        else:
            proc = subprocess.Popen(this_python(command), shell=True, env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        folders[id(proc)] = _run_folder(command)
        return proc, online

    running, done, failed = [], 0, 0
    start_time = time.time()
    try:
        while pending or running:
            while pending and len(running) < lanes:
                i = next_run([o for _, _, o in pending], sum(o for _, o in running), lanes)
                running.append(start(*pending.pop(i)))
            time.sleep(0.2)
            for proc, online in [r for r in running if r[0].poll() is not None]:
                running.remove((proc, online))
                done += 1
                failed += proc.returncode != 0
                if proc.returncode != 0:
                    print(f"[cpu_parallel] a run failed (exit status {proc.returncode}): {folders[id(proc)]}",
                          file=stream, flush=True)
                if done == len(commands) or done * 10 // len(commands) != (done - 1) * 10 // len(commands):
                    print(f"[cpu_parallel] {done}/{len(commands)} runs finished ({failed} failed), "
                          f"{time.time() - start_time:.0f}s", file=stream, flush=True)  # every tenth, and the last
    finally:
        if server:
            server.close()
    return failed
