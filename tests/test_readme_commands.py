"""Every command the README shows is exercised by a test: the README's shell
blocks are read, each command is reduced to what it runs (``cartcohort
<command> [<action>]``, a script of ``slurm/``, a make target, ``python -c``),
and each must appear in this explicit list of the tests that run it; the test
file must exist and run it (the pattern found in it). A command added to the
README without a test, or a test renamed away, fails here. The fitting
section's commands are run exactly as written by tests/test_fit_workflow.py."""
from pathlib import Path
import re

ROOT = Path(__file__).resolve().parents[1]

# what the README runs -> (test file, a pattern in it that runs it)
COVERED = {
    "cartcohort validate": ("test_cli.py", r'cartcohort\("validate"'),
    "cartcohort run": ("test_cli.py", r'"run", str\(config\)|cartcohort\("run"'),
    "cartcohort run --resume": ("test_run_integrity.py", r'"--resume"'),
    "cartcohort report": ("test_run_integrity.py", r'\("report", run_dir\)'),
    "cartcohort query": ("test_run_integrity.py", r'\("query", run_dir'),
    "cartcohort verify": ("test_run_integrity.py", r'"verify", run_dir'),
    "cartcohort repair": ("test_run_integrity.py", r'"repair", run_dir'),
    "cartcohort models": ("test_cli.py", r'cartcohort\("models"'),
    # the risk commands are one call each of these (pipeline/risk/commands.py)
    "cartcohort risk fit": ("test_risk.py", r"risk_fit\(run_dir"),
    "cartcohort risk score": ("test_risk.py", r"risk_score\("),
    "cartcohort risk decide": ("test_risk.py", r"risk_decide\(run_dir"),
    "cartcohort simulate-data": ("test_fit_workflow.py", r"README"),
    "cartcohort fit": ("test_fit_workflow.py", r"README"),
    "cartcohort calibrate": ("test_calibration.py", r'"calibrate"'),
    "cartcohort run --cluster slurm": ("test_slurm_dask.py", r'"--cluster", "slurm"'),
    "sbatch slurm/cohort.sbatch": ("test_slurm_batch.py", r"cohort\.sbatch"),
    "slurm/submit-array.sh": ("test_slurm_batch.py", r"submit-array\.sh"),
    "python -c": ("test_readme_commands.py", r"_MANIFEST_ONE_LINER"),
    "make run": ("test_readme_commands.py", r"def test_make_targets_exist"),
    "make test": ("test_readme_commands.py", r"def test_make_targets_exist"),
}

# the README's one-line check of a run's shard states, run here on a manifest
_MANIFEST_ONE_LINER = "collections.Counter(m[\"shards\"].values())"


def readme_commands():
    """What each command line of the README's shell blocks runs."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = set()
    for body in re.findall(r"```(?:sh|bash|shell)\n(.*?)```", text, re.S):
        for line in body.splitlines():
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            if words[0] == "cartcohort":
                sub = [w for w in words[1:3] if re.fullmatch(r"[a-z-]+", w)]
                key = " ".join(["cartcohort", *sub[:2 if sub[:1] == ["risk"] else 1]])
                if "fit|score|decide" in line:
                    found.update(f"cartcohort risk {a}" for a in ("fit", "score", "decide"))
                    continue
                if "--resume" in words:
                    key += " --resume"
                if "--cluster" in words and "slurm" in words:
                    key += " --cluster slurm"
                found.add(key)
            elif words[0] == "sbatch":
                found.add("sbatch " + next(w for w in words if w.startswith("slurm/")))
            elif words[0].startswith("slurm/") or words[0] == "make":
                found.add(" ".join(words[:2]) if words[0] == "make" else words[0])
            elif words[0] == "python" and words[1:2] == ["-c"]:
                found.add("python -c")
    return found


def test_every_readme_command_has_a_test_that_runs_it():
    commands = readme_commands()
    assert len(commands) >= 15
    assert sorted(commands - set(COVERED)) == []
    for command in sorted(commands):
        name, pattern = COVERED[command]
        source = (ROOT / "tests" / name).read_text(encoding="utf-8")
        assert re.search(pattern, source), f"{command}: tests/{name} does not run it"


def test_make_targets_exist():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    for target in ("run", "test"):
        assert re.search(rf"^{target}:", makefile, re.M), target
    assert "cartcohort run configs/default.toml" in makefile


def test_the_readme_manifest_one_liner_counts_shard_states(tmp_path):
    import json
    import subprocess
    import sys

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    line = next(l for l in text.splitlines() if _MANIFEST_ONE_LINER in l)
    code = re.search(r"python -c '(.*)'", line)[1]
    run = tmp_path / "runs" / "my"
    run.mkdir(parents=True)
    (run / "_manifest.json").write_text(json.dumps(
        {"shards": {"0": "done", "1": "pending", "2": "done"}}))
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, check=True)
    assert result.stdout.strip() == "Counter({'done': 2, 'pending': 1})"
