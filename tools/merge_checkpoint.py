"""merge_checkpoint: merge a distributed training checkpoint into single-card weights.

    python -m tools.merge_checkpoint --input_path OUTPUT_DIR [--output_path ./temp]
        [--split_num N] [--offload] [--as_safetensors]

--input_path is a training output directory (its newest complete checkpoint), one
checkpoint-<step> directory, or a bare dist.save_state_dict directory. Only model
parameters are merged; optimizer state is left out. Runs in one process.
Exit codes: 0 done, 2 bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script (python tools/...py): make the project importable, as tools/train.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="merge_checkpoint", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input_path", required=True, help="training output dir, checkpoint-<step> dir, or "
                        "dist.save_state_dict dir")
    parser.add_argument("--output_path", default="./temp", help="where to write the merged weights (default ./temp)")
    parser.add_argument("--split_num", type=int, default=1, help="number of output files (default 1)")
    parser.add_argument("--offload", action="store_true", help="merge into host memory (saves GPU memory)")
    parser.add_argument("--as_safetensors", action="store_true", help="write safetensors instead of .pdparams")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from runtime.merge import MergeOptions, merge_checkpoint

    try:
        options = MergeOptions(split_num=args.split_num, offload=args.offload, as_safetensors=args.as_safetensors)
        result = merge_checkpoint(args.input_path, args.output_path, options)
    except ValueError as err:
        print(f"merge_checkpoint: error: {err}", file=sys.stderr)
        return 2
    index = f", index {result.index_file.name}" if result.index_file else ""
    print(f"merged {result.num_tensors} tensors ({result.total_bytes / 1e6:.2f} MB) into "
          f"{len(result.files)} file(s) under {result.output_path}{index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
