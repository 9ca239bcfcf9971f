"""Gather the wheels `python -m bench.gpu` needs on a bare GPU box (one with CUDA torch
and no internet), and print their total size against what can be carried (64 MiB).

    python -m bench.gpu_wheels DIR [--python-version 3.11] [--exclude numpy,pillow]

What is gathered: every distribution `bench.gpu` imports (found by importing it here
and mapping the modules to their distributions), at the versions installed here,
as binary wheels for manylinux x86-64, without torch and what its wheel requires
(triton, sympy, jinja2, the nvidia-* libraries...: the box has them) and without
app.py's server packages (the cold start is skipped without them). On the box:

    pip install --no-index --no-deps DIR/*.whl
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

CARRY_LIMIT = 64 << 20
# A CUDA box has these with its torch; this project's own code is carried as source.
ON_THE_BOX = {"torch", "triton", "setuptools", "z-image-turbo-service"}


def needed_distributions() -> dict[str, str]:
    """Name -> installed version of each distribution bench.gpu's imports load."""
    import bench.full_model
    import bench.gpu
    import cache  # noqa: F401 (service_overheads imports these inside)
    import pipeline.encoding
    import pipeline.fp8
    import pipeline.request  # noqa: F401

    bench.full_model.build_full_pipeline  # noqa: B018 (its imports are inside: load them)
    from diffusers import ZImagePipeline  # noqa: F401
    from torchao.quantization import Float8Tensor  # noqa: F401
    from transformers import Qwen3Model  # noqa: F401

    owners = importlib.metadata.packages_distributions()
    tops = {name.split(".")[0] for name in sys.modules}
    names = {dist for top in tops for dist in owners.get(top, [])}
    # What torch's own wheel requires is on the box with it (sympy, jinja2, filelock, ...).
    with_torch = {
        re.split(r"[ ;<>=!~\[]", r, maxsplit=1)[0].lower() for r in importlib.metadata.requires("torch") or []
    }
    return {
        name: importlib.metadata.version(name)
        for name in sorted(names)
        if name not in ON_THE_BOX and name.lower() not in with_torch and not name.startswith("nvidia-")
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_wheels", description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="where to put the wheels")
    parser.add_argument("--python-version", default=f"{sys.version_info.major}.{sys.version_info.minor}")
    parser.add_argument("--exclude", default="", help="distributions the box already has, comma-separated")
    args = parser.parse_args(argv)
    skip = {name.strip().lower() for name in args.exclude.split(",") if name.strip()}
    wanted = {n: v for n, v in needed_distributions().items() if n.lower() not in skip}
    args.dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "-d",
        str(args.dir),
    ]
    command += ["--python-version", args.python_version, "--platform", "manylinux_2_28_x86_64"]
    command += ["--platform", "manylinux2014_x86_64", "--platform", "any"]
    subprocess.run([*command, *(f"{n}=={v}" for n, v in wanted.items())], check=True)
    wheels = sorted(args.dir.glob("*.whl"))
    total = sum(w.stat().st_size for w in wheels)
    for wheel in wheels:
        print(f"{wheel.stat().st_size / 2**20:8.2f} MiB  {wheel.name}")
    verdict = "fits" if total <= CARRY_LIMIT else "does NOT fit; --exclude what the box has"
    print(f"{total / 2**20:8.2f} MiB  in {len(wheels)} wheels: {verdict} in {CARRY_LIMIT >> 20} MiB")
    return 0 if total <= CARRY_LIMIT else 1


if __name__ == "__main__":
    raise SystemExit(main())
