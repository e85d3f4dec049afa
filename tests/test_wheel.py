"""The built wheel works on its own: installed into a fresh venv that has no editable install of the
project (its dependencies come from this environment's site-packages), `mmsa report --list` finds the
report pack and `mmsa score` scores the demo dump, so SQL, deployments and the model ship inside it."""

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(cmd, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_the_wheel_alone_lists_reports_and_scores_the_demo_dump(tmp_path):
    run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "whl")])
    (wheel,) = (tmp_path / "whl").glob("mmsa-*.whl")
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    site = Path(run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    # The dependencies, not the project: a path added by a .pth line has its own .pth files (the editable
    # install's finder among them) ignored.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps", "-q", str(wheel)])
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PREFECT_API_URL")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    mmsa = str(venv / "bin" / "mmsa")
    where = run([venv / "bin" / "python", "-c", "import mmsa, mmsa.flows, mmsa.sql; print(mmsa.__file__, mmsa.sql.__file__)"],
                cwd=tmp_path, env=env).stdout
    assert str(ROOT) not in where and str(site) in where

    listed = run([mmsa, "report", "--list"], cwd=tmp_path, env=env).stdout
    assert "daily_brand_sentiment" in listed and "share_of_voice" in listed

    script = (
        "import subprocess, sys, pathlib\n"
        "from mmsa import demo\n"
        "site = pathlib.Path('site'); site.mkdir()\n"
        "with demo.serve_folder(site) as url:\n"
        "    demo.make_dump(site, url, 12)\n"
        "    sys.exit(subprocess.call([sys.argv[1], 'score', f'{url}/posts.jsonl', '--db', 'm.duckdb', '--out', 'out',\n"
        "                              '--allow-hosts', '127.0.0.1', '--quiet']))\n"
    )
    scored = run([venv / "bin" / "python", "-c", script, mmsa], cwd=tmp_path, env=env).stdout
    assert "13 rows in, 12 scored, 1 rejected" in scored
    table = run([mmsa, "report", "image_status_mix", "--db", "m.analyst.duckdb", "--format", "json"], cwd=tmp_path, env=env)
    assert json.loads(table.stdout)
