"""Human-readable plan report: the layout, predicted metrics, breakdowns and the runners-up."""

from __future__ import annotations

from planner.plan import Plan, PlanReport

GiB = 2**30
MEMORY_LABELS = (("params", "parameters"), ("grads", "gradients"), ("optimizer", "optimizer state"),
                 ("activations", "activations"), ("transient", "transient buffers"), ("reserve", "runtime reserve"))
TIME_LABELS = (("compute", "compute"), ("recompute", "recompute"), ("mp_comm", "mp communication"),
               ("ep_comm", "ep all-to-all"), ("cp_comm", "cp ring p2p"), ("pp_comm", "pp p2p"),
               ("bubble", "pipeline bubble"), ("dp_comm", "dp gradient sync (exposed)"),
               ("optimizer", "optimizer step"))


def _count(n: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def format_report(plan: Plan, report: PlanReport) -> str:
    """A fixed-width text report (deterministic: the same plan gives the same text)."""
    lay = plan.layout
    lines = [
        f"Plan for {plan.model_name} ({_count(plan.params)} parameters, {_count(plan.active_params)} active per token)"
        f" on {plan.num_devices}x{plan.device} ({plan.devices_per_node} per node)",
        f"workload: {plan.mode}, seq {plan.seq_len}, global batch {lay.global_batch_size} sequences "
        f"({lay.global_batch_size * plan.seq_len / 1e6:.2f}M tokens), {plan.dtype}",
        "",
        "layout",
        f"  dp {lay.dp}  mp {lay.mp}  pp {lay.pp}  ep {lay.ep}  cp {lay.cp}  sharding stage {lay.sharding_stage}"
        f"  sequence parallel {'on' if lay.sequence_parallel else 'off'}",
        f"  micro-batch {lay.micro_batch_size} x {lay.num_micro_batches} micro-batches, vpp {lay.vpp}, "
        f"recompute {lay.recompute}",
        f"  mesh {' x '.join(f'{a}={d}' for a, d in lay.mesh_axes())}",
        f"  --layout \"{lay.short()}\"",
    ]
    if lay.pp > 1:
        spans = [f"{s.first_layer}-{s.last_layer}" for s in plan.stages]
        lines.append(f"  stages (layer 0 = embedding): {' | '.join(spans)}")
    lines += [
        "",
        "predicted",
        f"  step time        {report.step_time_s:10.3f} s",
        f"  tokens/s         {report.tokens_per_s:10.0f}  ({report.tokens_per_s_per_device:.0f} per device)",
        f"  TFLOP/s/device   {report.model_tflops_per_device:10.1f} model, "
        f"{report.hardware_tflops_per_device:.1f} hardware (with recompute)",
        f"  MFU              {100 * report.mfu:10.1f} %",
        f"  fits             {'yes' if report.fits else 'NO'}",
        "",
        "memory per device (fullest stage)",
    ]
    mem = report.memory_bytes_per_device
    lines += [f"  {label:<18}{mem[key] / GiB:8.2f} GiB" for key, label in MEMORY_LABELS]
    lines.append(f"  {'total':<18}{mem['total'] / GiB:8.2f} GiB")
    lines += ["", "time per step"]
    total = report.step_time_s
    for key, label in TIME_LABELS:
        value = report.time_breakdown_s[key]
        if value > 0:
            lines.append(f"  {label:<28}{value:10.3f} s  {100 * value / total:5.1f} %")
    if report.alternatives:
        lines += ["", "next best (why slower)"]
        for alt in report.alternatives:
            lines.append(f"  {alt['layout']}")
            lines.append(f"      {alt['step_time_s']:.3f} s, MFU {100 * alt['mfu']:.1f} %: {alt['why_slower']}")
    solver = report.solver
    lines += ["", f"solver: {solver.candidates} candidates, {solver.pruned_memory} pruned by memory, "
                  f"{solver.pruned_bound} by bound, {solver.evaluated} estimated, {solver.wall_s:.2f} s"]
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines) + "\n"
