"""`--workers N`: the command line of each worker (pure), and the flag's bounds."""

from __future__ import annotations

import pytest

from mesh.server.runner import parse_args
from mesh.server.workers import Workers, worker_command

PY = ("python", "-m", "hms_services.fees.main")


@pytest.mark.parametrize(
    ("argv", "index", "options", "tail"),
    [
        ([], 1, {}, ["--workers=1", "--worker=1"]),
        (
            ["--workers=4", "--ttl=5"],
            3,
            {},
            ["--workers=4", "--ttl=5", "--workers=1", "--worker=3"],
        ),
        (
            ["--instance-id=fees-1-abc"],
            2,
            {"instance_id": "fees-1-abc"},
            [
                "--instance-id=fees-1-abc",
                "--workers=1",
                "--worker=2",
                "--instance-id=fees-1-abc-w2",
            ],
        ),
        # A fixed port (and metrics port) becomes one port per worker.
        (
            ["--port=50051", "--metrics-port=9100"],
            3,
            {"port": 50051, "metrics_port": 9100},
            [
                "--port=50051",
                "--metrics-port=9100",
                "--workers=1",
                "--worker=3",
                "--port=50053",
                "--metrics-port=9102",
            ],
        ),
    ],
)
def test_a_worker_runs_the_same_program_with_its_own_flags_last(
    argv: list[str], index: int, options: dict[str, object], tail: list[str]
) -> None:
    command = worker_command(argv, index, interpreter=PY, **options)  # type: ignore[arg-type]
    assert command == [*PY, *tail]


def test_the_last_of_a_repeated_flag_wins_so_a_worker_serves_alone() -> None:
    command = worker_command(["--workers=8", "--instance-id=x-1"], 5, instance_id="x-1")
    args = parse_args("fees", command[command.index("--workers=8") :], environ={})
    assert (args.workers, args.worker, args.instance_id) == (1, 5, "x-1-w5")


@pytest.mark.parametrize("value", ["0", "65", "-1", "two", "1.5", ""])
def test_workers_outside_1_to_64_are_refused(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        parse_args("fees", [f"--workers={value}"], environ={})
    assert "whole number from 1 to 64" in capsys.readouterr().err


def test_workers_come_from_the_environment_too() -> None:
    assert parse_args("fees", [], environ={"MESH_WORKERS": "3"}).workers == 3
    assert parse_args("fees", ["--workers=2"], environ={"MESH_WORKERS": "3"}).workers == 2
    assert parse_args("fees", [], environ={}).workers == 1


@pytest.mark.parametrize("bad", [0, -2])
def test_no_workers_is_refused(bad: int) -> None:
    with pytest.raises(ValueError, match="workers must be >= 1"):
        Workers(lambda i: ["true"], bad)
    with pytest.raises(ValueError, match="worker index must be >= 1"):
        worker_command([], bad)
