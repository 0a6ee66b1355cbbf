import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_reference_folder_is_not_a_package():
    assert (REPO / "transformers").is_dir()
    assert not (REPO / "transformers" / "__init__.py").exists()


def test_importing_transformers_from_the_repo_root_gives_the_installed_release():
    code = "import transformers, os; print(transformers.__version__); print(os.path.dirname(transformers.__file__))"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    version, location = out.stdout.split()
    assert version == "4.31.0"
    assert Path(location).resolve() != (REPO / "transformers").resolve()
    assert "site-packages" in location
