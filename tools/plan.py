"""`plan`: the command line of the planner. It only translates arguments into library calls.

    plan --model llama-7b --devices 8xA100
    plan --model deepseek-v3 --devices 2048xH800 --format json --out plan.json
    plan --model llama3.1-405b --devices 16384xH100 --layout "mp=8,pp=16,recompute=full"
    plan --model-class paddleformers:LlamaForCausalLM --model path/to/config.json --devices 8xA100
    plan capacity ...   (what-if studies, see tools/capacity.py)
    plan validate ...   (cost model against published runs, see tools/validate.py)

Exit codes: 0 a plan, 2 bad input, 3 the model does not fit.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2
EXIT_DOES_NOT_FIT = 3
SUBCOMMANDS = ("capacity", "validate")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line and exits 2."""

    def error(self, message: str) -> None:
        print(f"plan: {message} (plan --help shows the options)", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def parse_count(text: str) -> int:
    """Token or sequence counts with an optional K/M/B/T suffix: 4M, 15T."""
    scale = {"K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}
    text = text.strip().upper()
    try:
        if text[-1:] in scale:
            return int(float(text[:-1]) * scale[text[-1]])
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count such as 4096, 4M or 15T") from None


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="plan", description="Choose a parallel layout for training an LLM with Paddle auto-parallel.")
    p.add_argument("--model", help="preset name (plan --list-models) or path to a config.json")
    p.add_argument("--devices", help="COUNTxDEVICE, e.g. 8xA100 or 2048xH800 (plan --list-devices)")
    p.add_argument("--model-class", metavar="MODULE:CLASS",
                   help="trace this paddle.nn.Layer, built from --model's config.json without weights, instead of "
                        "the analytic model (e.g. paddleformers:LlamaForCausalLM); imports paddle")
    p.add_argument("--layout", help='score this layout, e.g. "mp=8,pp=16,dp=16,sharding=1,mbs=1,vpp=1,'
                                    'recompute=full,sp=1"; knobs left out are searched')
    p.add_argument("--seq-len", type=int, help="tokens per sequence (default: the model's training length)")
    batch = p.add_mutually_exclusive_group()
    batch.add_argument("--global-batch", type=parse_count, help="sequences per optimizer step")
    batch.add_argument("--global-batch-tokens", type=parse_count, help="tokens per optimizer step (e.g. 4M)")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp8"), help="training precision (default: bf16, "
                                                                     "fp16 on devices without bf16)")
    p.add_argument("--mode", choices=("pretrain", "sft", "lora", "dpo"), default="pretrain")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--format", choices=("table", "json"), default="table", help="stdout format")
    p.add_argument("--out", type=Path, help="write the plan file (JSON) here")
    p.add_argument("--list-models", action="store_true", help="list the model presets")
    p.add_argument("--list-devices", action="store_true", help="list devices and their aliases")
    return p


def _list_models() -> str:
    from planner.frontends import load_preset, preset_names
    rows = []
    for name in preset_names():
        spec = load_preset(name)
        moe = f", MoE {spec.moe.num_experts}x top-{spec.moe.top_k}" if spec.moe else ""
        rows.append(f"{name:<18} {spec.family:<12} {spec.num_layers:>3} layers, hidden {spec.hidden_size}{moe}")
    return "\n".join(rows)


def _list_devices() -> str:
    from cost_models.hardware import device_names, load_hardware
    rows = []
    for name in device_names():
        hw = load_hardware(name)
        flag = f"  unverified: {', '.join(hw.unverified)}" if hw.unverified else ""
        rows.append(f"{name:<14} {hw.memory_bytes / 2**30:6.1f} GiB  {hw.peak(hw.default_dtype()) / 1e12:7.1f} "
                    f"TFLOP/s {hw.default_dtype()}  aliases: {', '.join(hw.aliases) or '-'}{flag}")
    return "\n".join(rows)


def _traced_graph(args: argparse.Namespace):
    """The op graph of --model-class traced at the sequence length the plan will use."""
    from planner.api import resolve
    from planner.frontends.paddle import trace_config_file
    request = resolve(args.model, args.devices, seq_len=args.seq_len)
    return trace_config_file(args.model_class, args.model, spec=request.spec, seq_len=request.workload.seq_len)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in SUBCOMMANDS:
        from importlib import import_module
        return import_module(f"tools.{argv[0]}").main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.list_models:
        print(_list_models())
        return 0
    if args.list_devices:
        print(_list_devices())
        return 0
    if not args.model or not args.devices:
        print("plan: --model and --devices are required (e.g. plan --model llama-7b --devices 8xA100)",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    from planner.api import DoesNotFit, make_plan
    from planner.emit.report import format_report
    from planner.plan import dumps_plan_file
    try:
        graph = _traced_graph(args) if args.model_class else None
        plan, report = make_plan(args.model, args.devices, seq_len=args.seq_len, global_batch=args.global_batch,
                                 global_batch_tokens=args.global_batch_tokens, layout=args.layout, mode=args.mode,
                                 dtype=args.dtype, lora_rank=args.lora_rank, graph=graph)
    except DoesNotFit as error:
        print(f"plan: {error}", file=sys.stderr)
        return EXIT_DOES_NOT_FIT
    except ValueError as error:
        print(f"plan: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    text = dumps_plan_file(plan, report)
    if args.out:
        args.out.write_text(text)
    print(text if args.format == "json" else format_report(plan, report), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
