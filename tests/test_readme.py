"""README starts with the two commands a newcomer runs, and CI runs exactly README's test command."""

import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bash_blocks(text: str) -> list:
    return re.findall(r"```bash\n(.*?)\n```", text, flags=re.S)


def test_ci_runs_the_readme_test_command():
    readme = open(os.path.join(REPO, "README.md")).read()
    main_job, tests = _bash_blocks(readme)[:2]
    assert "di-jax distill" in main_job and "pytest" in tests
    venv = ". .venv/bin/activate && "
    assert venv in tests
    after_venv = tests.split(venv, 1)[1].strip()
    ci = open(os.path.join(REPO, ".ci", "run")).read().strip().splitlines()
    assert ci[-1].strip() == after_venv
