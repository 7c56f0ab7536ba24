"""The README's quick start is what CI runs: its test line must be .ci/run's last command."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    ci_command = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    readme_lines = [line.strip() for line in (ROOT / "README.md").read_text().splitlines()]
    assert "python -m pytest" in ci_command
    assert ci_command in readme_lines


def test_readme_usage_example_runs():
    import re

    example = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)[0]
    exec(compile(example, "README.md", "exec"), {})
