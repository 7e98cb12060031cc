"""infer: greedy generation from merged weights, dynamic graph and/or Paddle Inference.

    python -m tools.infer --weights ./temp --prompt_ids 1,5,7 [--prompt_ids 2,4,6]
        [--model llama-tiny] [--max_new_tokens 16] [--mode both|dynamic|static]
        [--export_dir DIR] [--eos_token_id ID]

--weights is what tools.merge_checkpoint wrote (a directory, an index file or one
weights file); --model (preset name or config.json) is needed only when no
model_spec.json lies next to the weights. Prompts are token ids (no tokenizer is
loaded); several --prompt_ids of equal length form one batch. Prints one line per
prompt and path: `<mode> <prompt index>: <ids ...>`.
Exit codes: 0 done, 1 the dynamic and static generations differ, 2 bad input.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script (python tools/...py): make the project importable, as tools/train.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODES = ("both", "dynamic", "static")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        self.exit(2, f"{self.prog}: error: {message}\n")


def _ids(text: str) -> list[int]:
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of token ids") from None
    if not ids:
        raise argparse.ArgumentTypeError("empty prompt")
    return ids


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="infer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", required=True, help="merged weights: directory, index file or weights file")
    parser.add_argument("--prompt_ids", type=_ids, action="append", required=True,
                        help="comma-separated token ids; repeat for a batch of equal-length prompts")
    parser.add_argument("--model", default="", help="preset name or config.json (default: model_spec.json "
                        "next to the weights)")
    parser.add_argument("--max_new_tokens", type=int, default=16)
    parser.add_argument("--mode", choices=MODES, default="both")
    parser.add_argument("--export_dir", default="", help="where to export the static graph (default: a temp dir)")
    parser.add_argument("--eos_token_id", type=int, default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if len({len(p) for p in args.prompt_ids}) != 1:
        print(f"infer: error: prompts of a batch must have equal length, got lengths "
              f"{[len(p) for p in args.prompt_ids]}", file=sys.stderr)
        return 2
    from runtime.inference import StaticPredictor, dynamic_generate, export_static, load_model

    try:
        spec = None
        if args.model:
            from planner.frontends import load_model as load_spec

            spec = load_spec(args.model)
        model = load_model(args.weights, spec)
        results = {}
        if args.mode in ("both", "dynamic"):
            results["dynamic"] = dynamic_generate(model, args.prompt_ids, args.max_new_tokens,
                                                  eos_token_id=args.eos_token_id)
        if args.mode in ("both", "static"):
            with tempfile.TemporaryDirectory() as tmp:
                export_dir = export_static(model, args.export_dir or tmp)
                results["static"] = StaticPredictor(export_dir).generate(args.prompt_ids, args.max_new_tokens,
                                                                         eos_token_id=args.eos_token_id)
    except ValueError as err:
        print(f"infer: error: {err}", file=sys.stderr)
        return 2
    for mode, ids in results.items():
        for i, row in enumerate(ids):
            print(f"{mode} {i}: {' '.join(str(t) for t in row)}")
    if len(results) == 2 and (results["dynamic"].shape != results["static"].shape
                              or (results["dynamic"] != results["static"]).any()):
        print("infer: dynamic and static generations differ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
