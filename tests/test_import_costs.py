"""Config modules, ``--help`` and ``--print-config`` never load torch: a watcher's polling, a config
check or a look at the options must not pay for it (seconds, and gigabytes on a GPU node)."""
from __future__ import annotations

import subprocess
import sys

import pytest

REPO_CONFIGS = __import__("pathlib").Path(__file__).resolve().parent.parent / "configs"

CONFIG_MODULES = ["actgen.shards.config", "actgen.builder.config", "actgen.builder.inputs", "actgen.builder.watch",
                  "actgen.trainer.config", "actgen.fitting.config", "actgen.demo.config"]

CLI_CALLS = [
    ("actgen.builder.cli", ["--help"]),
    ("actgen.builder.cli", ["--config", str(REPO_CONFIGS / "build-smoke.yaml"), "--checkpoint", "c",
                            "--manifest", "m", "--output", "o", "--print-config"]),
    ("actgen.trainer.cli", ["--help"]),
    ("actgen.trainer.cli", ["--config", str(REPO_CONFIGS / "train-digits.yaml"), "--print-config"]),
    ("actgen.fitting.cli", ["--help"]),
    ("actgen.demo.cli", ["--help"]),
    ("actgen.sharing.cli", ["--help"]),
]


def _loads_torch(code: str) -> tuple[bool, str]:
    probe = code + "\nimport sys\nprint('TORCH', 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert "TORCH" in out.stdout, out.stdout + out.stderr
    return out.stdout.strip().endswith("TORCH True"), out.stdout + out.stderr


@pytest.mark.parametrize("module", CONFIG_MODULES)
def test_config_modules_import_no_torch(module):
    loads, output = _loads_torch(f"import {module}")
    assert not loads, f"importing {module} loads torch"


@pytest.mark.parametrize("module,args", CLI_CALLS, ids=[f"{m.split('.')[1]}:{a[-1]}" for m, a in CLI_CALLS])
def test_help_and_print_config_load_no_torch(module, args):
    code = (f"import sys\nfrom {module} import main\nsys.argv = ['prog', *{args!r}]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code")
    loads, output = _loads_torch(code)
    assert "Traceback" not in output, output
    assert not loads, f"{module} {' '.join(args)} loads torch"
