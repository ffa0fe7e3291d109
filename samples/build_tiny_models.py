"""Build tiny, randomly initialised checkpoints of every supported model family's real class, offline.

They load with the same ``from_pretrained(local_dir)`` path as the real models, so the whole pipeline runs with
no network: ``python samples/build_tiny_models.py /tmp/tiny`` then ``vidq ask VIDEO Q --model /tmp/tiny/<model_type>``.
Answers are nonsense (random weights); the point is the plumbing. Each checkpoint is well under 1 MB and takes a
fraction of a second to build, so tests build them in a session fixture instead of committing binaries. The
recipe of each lives in its family's file (``Pipeline.build_tiny``); this script only loops over the families.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from flashvid_cli.pipelines.registry import families

BUILDERS = {name: cls.build_tiny for name, cls in families().items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write one <out>/<model_type> checkpoint per family into")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name, build in BUILDERS.items():
        path = build(args.out / name, seed=args.seed)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
