"""Train several arguments files one after another in one process: one launch of
`python -m paddle.distributed.launch` then covers many (model, mode) runs, which keeps the
multi-process tests short (each launch costs ~10 s of process start and imports).

    python -m paddle.distributed.launch --nproc_per_node 2 tests/runtime/train_many.py a.json b.json
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script, as paddle.distributed.launch does
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from runtime.args import TrainArgs  # noqa: E402
from runtime.train import train  # noqa: E402

if __name__ == "__main__":
    for args_file in sys.argv[1:]:
        train(TrainArgs.from_file(args_file))
