"""The `mmsa` executable itself (mmsa.cli.entry), as a separate process."""

import subprocess
import sys


def test_the_executable_exits_with_mains_code_after_every_atexit_handler(tmp_path):
    """`mmsa` ends the ordinary way: handlers registered while a command ran (Prefect's server stop, log
    flushes) run, printed output is not lost, and the exit code is main's."""
    marker = tmp_path / "handler-ran"
    code = (
        "import atexit, pathlib\n"
        "from mmsa import cli\n"
        "def fake_main():\n"
        f"    atexit.register(pathlib.Path({str(marker)!r}).write_text, 'yes')\n"
        "    print('done scoring')\n"
        "    return 3\n"
        "cli.main = fake_main\n"
        "cli.entry()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (proc.returncode, proc.stdout, marker.read_text()) == (3, "done scoring\n", "yes")

    missing = tmp_path / "missing.jsonl"
    proc = subprocess.run([sys.executable, "-m", "mmsa.cli", "fetch", str(missing), "--cache", str(tmp_path / "c")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "mmsa fetch: error:" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "mmsa.cli", "fetch", "--no-such-flag"], capture_output=True, text=True)
    assert proc.returncode == 2 and "arguments are required" in proc.stderr  # argparse's own exit, not the handler's


def test_a_run_stopped_by_sigterm_stops_its_temporary_prefect_server_and_says_so(tmp_path):
    """A service manager stops a command with SIGTERM: Prefect's handler ended the process on the spot, leaving its
    temporary API server running (220 MB a stopped night). Now it is stopped as Ctrl-C stops it, in one line."""
    import contextlib
    import json
    import os
    import re
    import signal
    import socket
    import threading

    dump = tmp_path / "d.jsonl"
    dump.write_text("".join(json.dumps({"post_id": f"p{n}", "created_at": "2026-11-20T10:00:00Z",
                                        "text": f"acme post {n} is fine"}) + "\n" for n in range(400)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), TQDM_DISABLE="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "mmsa.cli", "score", str(dump), "--db", str(tmp_path / "m.duckdb"),
                             "--out", str(tmp_path / "out"), "--shard-size", "2"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    seen: list[str] = []

    def read() -> None:  # a server left running keeps the pipe open: read in a thread, never to its end here
        for line in proc.stdout:
            seen.append(line)
            if "score-shard" in line and proc.poll() is None:  # shards running
                proc.send_signal(signal.SIGTERM)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=120)
        reader.join(timeout=10)
        output = "".join(seen)
        assert code == -signal.SIGTERM, output[-2000:]  # ended by the signal, after its exit handlers
        assert "mmsa score: stopped; what was done is kept and a rerun goes on from there" in output
        port = int(re.search(r"Starting temporary server on http://127\.0\.0\.1:(\d+)", output).group(1))
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0  # nothing listens there any more
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever of the run's session is left


def test_a_mistyped_training_head_and_a_demo_too_small_are_one_line_before_any_work(tmp_path, capsys):
    from mmsa.cli import main

    assert main(["train", "--head", "bogus", "--out", str(tmp_path / "m")]) == 2
    assert capsys.readouterr().err.startswith("mmsa train: error: unknown head 'bogus'; choose from stack, text, image")
    assert main(["demo", "--workdir", str(tmp_path / "demo"), "--posts", "4"]) == 2
    assert "--posts must be at least 6" in capsys.readouterr().err
    assert not (tmp_path / "m").exists() and not (tmp_path / "demo" / "posts.jsonl").exists()


def test_counts_and_training_options_that_cannot_work_are_refused_before_any_work(tmp_path, capsys):
    """A negative --batch-size made no batches (evaluate printed the metrics of all-zero probabilities, exit 0);
    --folds 1 failed in scikit-learn after the features were encoded; `train` (the stack recipe) wrote a model
    ignoring --text-encoder, --epochs and the other paper-head options it was given."""
    import time

    import pytest

    from mmsa.cli import main

    started = time.monotonic()
    for argv in (["evaluate", "--data", "x.jsonl", "--batch-size", "-1"], ["evaluate", "--data", "x.jsonl", "--batch-size", "0"],
                 ["compare", "--folds", "1"], ["compare", "--repeats", "0"], ["compare-targets", "--folds", "1"],
                 ["quantify-compare", "--bags", "0"], ["train", "--head", "text", "--epochs", "0", "--out", "m"],
                 ["fetch", "d.jsonl", "--cache", "c", "--workers", "0"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2 and "a whole number of at least" in capsys.readouterr().err, argv
    assert main(["train", "--text-encoder", "/no/such", "--epochs", "3", "--out", str(tmp_path / "m")]) == 2
    assert capsys.readouterr().err.startswith("mmsa train: error: --text-encoder, --epochs: only the paper heads")
    assert main(["train", "--head", "text", "--folds", "3", "--members", "4", "--out", str(tmp_path / "m")]) == 2
    assert "1 <= members <= folds" in capsys.readouterr().err
    assert time.monotonic() - started < 10 and not (tmp_path / "m").exists()


def test_a_dashboard_port_out_of_range_is_one_line(capsys):
    """--port 99999 was a traceback from bind() (an OverflowError, not the OSError the server tells in one line)."""
    import pytest

    from mmsa.cli import build_parser

    assert build_parser().parse_args(["dashboard", "--db", "a.duckdb", "--port", "0"]).port == 0
    for port in ("99999", "-1", "http"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["dashboard", "--db", "a.duckdb", "--port", port])
        assert f"argument --port: a port from 0 to 65535, not {port!r}" in capsys.readouterr().err


def test_allow_hosts_takes_hosts_and_networks_and_names_a_dump_it_swallowed(capsys):
    """--allow-hosts takes any number of values, so a dump after it was taken for a host: the run said only that
    the dump was missing, and a host given with its port exempted nothing."""
    import pytest

    from mmsa.cli import build_parser

    args = build_parser().parse_args(["score", "--allow-hosts", "127.0.0.1", "10.0.0.0/8", "cdn.local", "::1", "bücher.example",
                                      "--db", "d", "--out", "o", "posts.jsonl"])
    assert args.allow_hosts == ["127.0.0.1", "10.0.0.0/8", "cdn.local", "::1", "bücher.example"] and args.dump == "posts.jsonl"
    for value in ("posts.jsonl", "dumps/2026-11-20.csv.gz", "s3://bucket/d.jsonl", "127.0.0.1:8080", "https://cdn.local"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["score", "--allow-hosts", "127.0.0.1", value, "--db", "d", "--out", "o"])
        assert f"argument --allow-hosts: {value!r} is not a host name, an IP address or a CIDR (the dump goes before " \
               "--allow-hosts)" in capsys.readouterr().err, value


def test_the_console_filter_hides_only_what_the_command_tells_in_one_line():
    """Prefect's failed-state lines of bad input and of mmsa.faults' failures go (the command says them in one line);
    any other exception's stay, whatever its name ends with."""
    import logging

    from mmsa.cli import _ToldFilter

    def shown(message: str) -> bool:
        return _ToldFilter().filter(logging.LogRecord("prefect", logging.ERROR, __file__, 1, message, None, None))

    told = ["Finished in state Failed('Task run encountered an exception ValueError: shard size 5')",
            "Finished in state Failed('Flow run encountered an exception: BackfillFailed: 1 of 2 days failed')",
            "Finished in state Failed('Flow run encountered an exception: PermanentError: no space left')"]
    bugs = ["Finished in state Failed('Task run encountered an exception RuntimeError: boom')",
            "Finished in state Failed('Flow run encountered an exception: KeyError: boom')"]
    import mmsa.flows.backfill  # noqa: F401  (BackfillFailed is a faults.Told defined there)

    assert [shown(m) for m in told + bugs] == [False, False, False, True, True]
