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
