"""This machine's pip settings, for container builds that must install from the same places.

    python3 container/pip_settings.py image-config ROOTFS   # write ROOTFS/etc/pip.conf (+ the files it names)
    python3 container/pip_settings.py mounts                # print DIR:DIR:ro lines (podman -v) for local wheel folders

The settings come from `pip config list` (config files, then PIP_* variables, which win). Local
folders named by find-links / index URLs are bind-mounted read-only by the build and run scripts
instead of being copied into image layers (they hold GBs of wheels).
"""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys

SECTIONS = ("global", "install", "download")
FOLDER_KEYS = ("find-links", "index-url", "extra-index-url")
FILE_KEYS = ("constraint", "requirement")


def effective_settings() -> dict[str, str]:
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                         check=False).stdout
    files, env = {}, {}
    for line in out.splitlines():
        name, _, value = line.partition("=")
        section, _, key = name.rpartition(".")
        if section == ":env:":
            env[key] = ast.literal_eval(value)
        elif section in SECTIONS:
            files[key] = ast.literal_eval(value)
    return {**files, **env}


def local_folders(settings: dict[str, str]) -> list[str]:
    folders: list[str] = []
    for key in FOLDER_KEYS:
        for url in settings.get(key, "").split():
            path = url.removeprefix("file://")
            if not path.startswith("/"):
                continue
            if os.path.basename(path.rstrip("/")) == "simple":  # PEP 503 pages link to ../files: mount the parent
                path = os.path.dirname(path.rstrip("/"))
            if os.path.isdir(path) and path not in folders:
                folders.append(path)
    return folders


def image_config(root: str) -> None:
    settings = effective_settings()
    for key in FILE_KEYS:
        for path in settings.get(key, "").split():
            if os.path.isfile(path):
                os.makedirs(root + os.path.dirname(path), exist_ok=True)
                shutil.copy(path, root + path)
    with open(os.path.join(root, "etc", "pip.conf"), "w", encoding="utf-8") as f:
        f.write("[global]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))


def main(argv: list[str]) -> int:
    if argv[:1] == ["image-config"] and len(argv) == 2:
        image_config(argv[1])
    elif argv == ["mounts"]:
        print("".join(f"{d}:{d}:ro\n" for d in local_folders(effective_settings())), end="")
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
