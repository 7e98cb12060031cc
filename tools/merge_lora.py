"""merge_lora: fold the LoRA adapters of a training run into their base weights (single-card weights).

    python tools/merge_lora.py --lora OUTPUT_DIR/lora --output_path ./merged
        [--base_weights WEIGHTS] [--split_num N] [--pdparams]

--lora is the adapter directory a LoRA run writes (model.safetensors + lora_config.json).
Every adapted weight becomes W + (alpha / r) * A @ B; the result is written as
runtime/merge writes merged checkpoints (safetensors unless --pdparams, with
model_spec.json), so tools/infer.py reads it. The base is --base_weights, else the
one the run recorded (its base_weights, or its seeded initial model).
Exit codes: 0 done, 2 bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="merge_lora", description=__doc__.split("\n\n")[0])
    parser.add_argument("--lora", required=True, help="adapter directory of a LoRA run (OUTPUT_DIR/lora)")
    parser.add_argument("--output_path", default="./merged", help="where to write the merged weights")
    parser.add_argument("--base_weights", default="", help="base weights (default: the base the run recorded)")
    parser.add_argument("--split_num", type=int, default=1, help="number of output files (default 1)")
    parser.add_argument("--pdparams", action="store_true", help="write Paddle .pdparams instead of safetensors")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from runtime.lora import merge_lora
    from runtime.merge import MergeOptions

    try:
        options = MergeOptions(split_num=args.split_num, as_safetensors=not args.pdparams)
        result = merge_lora(args.lora, args.output_path, base_weights=args.base_weights, options=options)
    except ValueError as err:
        print(f"merge_lora: error: {err}", file=sys.stderr)
        return 2
    print(f"merged LoRA adapters into {result.num_tensors} tensors ({result.total_bytes / 1e6:.2f} MB), "
          f"{len(result.files)} file(s) under {result.output_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
