"""The versions the image installs, read from pyproject.toml's [tool.t2v-dist.stack] (the one place).

    python3 container/stack.py torch          -> torch==2.13.0
    python3 container/stack.py deepspeed      -> deepspeed==0.19.8
    python3 container/stack.py torch-index    -> the PyTorch wheel index of the CUDA build (cu130 for cuda 13.0)
    python3 container/stack.py requirements [EXTRA ...]   -> the package's dependencies (+ extras), one a line

Runs with the bare python3 of the build stage (standard library only: nothing is installed yet).
"""
from __future__ import annotations

import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def stack(pyproject: Path = PYPROJECT) -> dict[str, str]:
    with open(pyproject, "rb") as f:
        return tomllib.load(f)["tool"]["t2v-dist"]["stack"]


def requirements(extras: list[str], pyproject: Path = PYPROJECT) -> list[str]:
    with open(pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    return list(project["dependencies"]) + [r for e in extras for r in project["optional-dependencies"][e]]


def torch_index(cuda: str) -> str:
    return "https://download.pytorch.org/whl/cu" + cuda.replace(".", "")


def main(argv: list[str]) -> int:
    pins = stack()
    if argv in (["torch"], ["deepspeed"]):
        print(f"{argv[0]}=={pins[argv[0]]}")
    elif argv[:1] == ["requirements"]:
        print("\n".join(requirements(argv[1:])))
    elif argv == ["torch-index"]:
        print(torch_index(pins["cuda"]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
