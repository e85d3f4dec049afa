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


def test_a_mistyped_training_head_and_a_demo_too_small_are_one_line_before_any_work(tmp_path, capsys):
    from mmsa.cli import main

    assert main(["train", "--head", "bogus", "--out", str(tmp_path / "m")]) == 2
    assert capsys.readouterr().err.startswith("mmsa train: error: unknown head 'bogus'; choose from stack, text, image")
    assert main(["demo", "--workdir", str(tmp_path / "demo"), "--posts", "4"]) == 2
    assert "--posts must be at least 6" in capsys.readouterr().err
    assert not (tmp_path / "m").exists() and not (tmp_path / "demo" / "posts.jsonl").exists()
