"""Seconds and peak memory of tracing full-size models with the Paddle frontend (weights never allocated).

    python benchmarks/trace_speed.py                      # DeepSeek-V3 and Llama-3.1-405B
    python benchmarks/trace_speed.py --model deepseek-v3 --json

Each model is traced in a fresh process, so its peak RSS is its own (the paddle
and paddleformers imports included; their time is reported apart).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

MODELS = ("deepseek-v3", "llama3.1-405b")


def trace_one(preset: str) -> dict:
    """Trace `preset` with its PaddleFormers class at its default sequence length; one row of results."""
    start = time.perf_counter()
    import paddle  # noqa: F401  (timed as the import)
    import paddleformers  # noqa: F401

    from planner.frontends import load_preset
    from planner.frontends.paddle import load_model_class, trace_model_class
    from planner.frontends.paddle.presets import config_dict, model_class_name
    from planner.trace import trace_model

    imported = time.perf_counter()
    # PaddleFormers 1.2.0's DeepseekV3Config drops num_nextn_predict_layers: no MTP module to trace
    spec = load_preset(preset).replace(num_mtp_layers=0)
    cls = load_model_class(model_class_name(spec))
    config = cls.config_class(**config_dict(spec))
    graph = trace_model_class(cls, config, seq_len=spec.default_seq_len, layer_kinds=spec.layer_kinds(), name=preset)
    traced = time.perf_counter()
    analytic = trace_model(spec, spec.default_seq_len)
    return {"model": preset, "seq_len": spec.default_seq_len, "import_s": round(imported - start, 2),
            "trace_s": round(traced - imported, 2),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "params": int(graph.count_params()), "analytic_params": int(analytic.count_params()),
            "fwd_flops_ratio": graph.fwd_flops() / analytic.fwd_flops()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", choices=MODELS, help="model preset (repeatable; default: all)")
    parser.add_argument("--json", action="store_true", help="print one JSON list instead of a table")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # trace one model in this process
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(trace_one(args.child)))
        return 0
    rows = []
    for preset in args.model or MODELS:
        done = subprocess.run([sys.executable, __file__, "--child", preset], capture_output=True, text=True)
        if done.returncode:
            print(done.stderr[-3000:], file=sys.stderr)
            return done.returncode
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    if args.json:
        print(json.dumps(rows))
        return 0
    for row in rows:
        print(f"{row['model']:<14} seq {row['seq_len']:>5}  trace {row['trace_s']:6.1f} s (imports "
              f"{row['import_s']:.1f} s)  peak RSS {row['peak_rss_bytes'] / 2**30:5.2f} GiB  "
              f"params {row['params'] / 1e9:7.2f} B  FLOPs traced/analytic {row['fwd_flops_ratio']:.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
