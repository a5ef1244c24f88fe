"""The plugin's command launchers without DomainBed: which commands the train server takes, lanes and failures."""
import io
import os
import sys
import time

from domainbed_diffusion.launchers import cpu_parallel, train_server

from conftest import REPO


def test_only_domainbeds_train_command_goes_to_the_train_server():
    command = ("python -m domainbed.scripts.train --algorithm ERM --hparams '{\"lr\": 0.001, \"a b\": [1]}' "
               "--output_dir '/tmp/with space' --test_envs 0 1")
    assert train_server.train_arguments(command) == ["--algorithm", "ERM", "--hparams", '{"lr": 0.001, "a b": [1]}',
                                                       "--output_dir", "/tmp/with space", "--test_envs", "0", "1"]
    assert train_server.train_arguments("python -m domainbed.scripts.sweep launch") is None
    assert train_server.train_arguments("python -m domainbed.scripts.train --hparams '{unclosed") is None
    assert train_server.train_arguments("echo python -m domainbed.scripts.train") is None


def test_cpu_parallel_counts_failures_and_runs_every_command(tmp_path, monkeypatch):
    monkeypatch.setattr(train_server, "TrainServer", None)  # no train command here: no server may be started
    marks = [tmp_path / f"ran{i}" for i in range(5)]
    commands = [f"python -c \"open({str(m)!r}, 'w').close(); import sys; sys.exit({i % 2 * 3})\""
                for i, m in enumerate(marks)]
    stream = io.StringIO()
    assert cpu_parallel.launcher(commands, lanes=2, stream=stream) == 2
    assert all(m.exists() for m in marks)
    lines = stream.getvalue().splitlines()
    assert lines[-1].startswith("[cpu_parallel] 5/5 runs finished (2 failed)")
    assert sum("a run failed (exit status 3)" in line for line in lines) == 2
    from domainbed_diffusion.launchers import this_python
    assert this_python("python -c 1").startswith(sys.executable)
    assert cpu_parallel._run_folder("python -m domainbed.scripts.train --output_dir '/a b/c' --seed 1") == "/a b/c"
    quiet = io.StringIO()  # a progress line every tenth of the runs, not one per run
    assert cpu_parallel.launcher(["python -c 1"] * 30, lanes=2, stream=quiet) == 0
    assert [line.split()[1] for line in quiet.getvalue().splitlines()] == [f"{k}/30" for k in range(3, 31, 3)]


def test_cpu_parallel_starts_the_online_runs_first_in_at_most_half_the_lanes():
    online = [False, True, False, True]
    assert cpu_parallel.next_run(online, online_running=0, lanes=2) == 1
    assert cpu_parallel.next_run(online, online_running=1, lanes=2) == 0  # the other lane takes a light run
    assert cpu_parallel.next_run([True, True], online_running=1, lanes=2) == 0  # nothing else left
    assert cpu_parallel.next_run(online, online_running=1, lanes=4) == 1
    assert cpu_parallel.next_run(online, online_running=2, lanes=4) == 0
    assert cpu_parallel.next_run(online, online_running=0, lanes=1) == 1


def test_cpu_parallel_knows_which_runs_generate_online():
    def train(algorithm):
        return f"python -m domainbed.scripts.train --algorithm {algorithm} --test_envs 0 --output_dir /tmp/x"
    commands = (train("DomainFusion"), train("ERM"), train("CDGA_IG"), "echo DomainFusion", train("NoSuchAlgorithm"))
    assert [cpu_parallel._generates_online(train_server.train_arguments(c)) for c in commands] == \
        [True, False, False, False, False]


FAKE_SCRIPT = '''
import sys
print("a library that talks while it is imported")
if __name__ == "__main__":
    print("the script's own output")
    with open(sys.argv[1], "w") as f:
        f.write("|".join(sys.argv[2:]))
    code = sys.argv[2]
    if code == "raise":
        raise ValueError("an uncaught error")
    sys.exit(None if code == "none" else code if not code.isdigit() else int(code))
'''


def test_train_server_runs_the_module_per_job_and_returns_its_exit_status(tmp_path):
    (tmp_path / "fake_train.py").write_text(FAKE_SCRIPT)
    paths = [str(tmp_path), REPO, os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p))
    server = train_server.TrainServer(env, module="fake_train")
    cases = {"0": 0, "3": 3, "none": 0, "raise": 1, "a message": 1}
    runs = {code: server.submit([str(tmp_path / f"argv{i}"), code, "two words", '{"j": 1}'])
            for i, code in enumerate(cases)}
    deadline = time.time() + 60
    while any(run.poll() is None for run in runs.values()) and time.time() < deadline:
        time.sleep(0.05)
    server.close()
    assert {code: run.returncode for code, run in runs.items()} == cases
    for i, code in enumerate(cases):
        assert (tmp_path / f"argv{i}").read_text() == f'{code}|two words|{{"j": 1}}'

