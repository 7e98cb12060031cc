"""Train a model from a JSON arguments file (see runtime/args.py for the keys).

    python tools/train.py args.json                                            # one process
    python -m paddle.distributed.launch --nproc_per_node 2 tools/train.py args.json

Rank 0 logs progress to the terminal and appends per-step metrics to
<output_dir>/metrics.jsonl. A bad argument or a plan that does not fit the
launch ends the run with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import linecache
import logging
import os
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script (as paddle.distributed.launch does): make the project importable
    sys.path.insert(0, str(PROJECT_ROOT))


def _raised_by_project(err: BaseException) -> bool:
    """Whether a `raise` statement of project code raised `err` (a user error we phrased), rather than Paddle."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return False
    filename = tb.tb_frame.f_code.co_filename
    return (Path(filename).resolve().is_relative_to(PROJECT_ROOT)
            and linecache.getline(filename, tb.tb_lineno).lstrip().startswith("raise"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train a model as the arguments file says (pretrain, sft, lora, dpo).")
    parser.add_argument("args_file", help="JSON arguments file")
    options = parser.parse_args(argv)
    rank = int(os.environ.get("PADDLE_TRAINER_ID", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s")

    from runtime.args import TrainArgs
    from runtime.train import train

    try:
        train(TrainArgs.from_file(options.args_file))
    except ValueError as err:
        if not _raised_by_project(err):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
