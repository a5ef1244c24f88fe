"""The plugin's command launchers without DomainBed: which commands the train server takes, lanes and failures."""
import io
import sys

from domainbed_diffusion import launchers


def test_only_domainbeds_train_command_goes_to_the_train_server():
    command = ("python -m domainbed.scripts.train --algorithm ERM --hparams '{\"lr\": 0.001, \"a b\": [1]}' "
               "--output_dir '/tmp/with space' --test_envs 0 1")
    assert launchers._train_arguments(command) == ["--algorithm", "ERM", "--hparams", '{"lr": 0.001, "a b": [1]}',
                                                   "--output_dir", "/tmp/with space", "--test_envs", "0", "1"]
    assert launchers._train_arguments("python -m domainbed.scripts.sweep launch") is None
    assert launchers._train_arguments("python -m domainbed.scripts.train --hparams '{unclosed") is None
    assert launchers._train_arguments("echo python -m domainbed.scripts.train") is None


def test_cpu_parallel_counts_failures_and_runs_every_command(tmp_path, monkeypatch):
    monkeypatch.setattr(launchers, "_TrainServer", None)  # no train command here: no server may be started
    marks = [tmp_path / f"ran{i}" for i in range(5)]
    commands = [f"python -c \"open({str(m)!r}, 'w').close(); import sys; sys.exit({i % 2 * 3})\""
                for i, m in enumerate(marks)]
    stream = io.StringIO()
    assert launchers.cpu_parallel_launcher(commands, lanes=2, stream=stream) == 2
    assert all(m.exists() for m in marks)
    assert "5/5 runs finished (2 failed)" in stream.getvalue()
    assert launchers._this_python("python -c 1").startswith(sys.executable)
