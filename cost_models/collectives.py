"""Collective communication times (alpha-beta) over the real node topology.

A communication group is described by its size and by how many of its
members share a node (`local_size`); mesh axes are laid out with mp
innermost, so a group of degree d whose members are `stride` ranks apart
has min(d, devices_per_node // stride) members per node.

Bandwidth model (bus bandwidth B of a group):
- inside one node: the per-device intra-node link (NVLink, HCCS, XPU Link);
- across nodes: NCCL runs one ring per rail, so a node moves local_size NIC
  shares at once: B = min(intra, local_size x per-device NIC bandwidth).
Ring all-reduce moves 2(n-1)/n of the buffer, all-gather and reduce-scatter
(n-1)/n of the full buffer; all-to-all sends (n-1)/n of the buffer, its
intra- and inter-node parts concurrently. Latency: the cheaper of ring
(n-1 hops) and tree (log2 n hops) per phase.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cost_models.hardware import HardwareSpec

COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "p2p")


@dataclass(frozen=True, slots=True, kw_only=True)
class CommGroup:
    """`size` ranks, `local_size` of them in each node."""

    size: int
    local_size: int

    def __post_init__(self) -> None:
        if self.size < 1 or self.local_size < 1 or self.size % self.local_size:
            raise ValueError(f"comm group: local_size={self.local_size} must divide size={self.size} (both >= 1)")

    @property
    def nodes(self) -> int:
        return self.size // self.local_size

    @classmethod
    def for_axis(cls, degree: int, stride: int, devices_per_node: int) -> "CommGroup":
        """The group of a mesh axis of `degree` whose neighbours are `stride` ranks apart."""
        local = max(1, min(degree, devices_per_node // stride)) if stride < devices_per_node else 1
        while degree % local:
            local -= 1
        return cls(size=degree, local_size=local)


def _bus(group: CommGroup, hw: HardwareSpec) -> tuple[float, float]:
    """(bytes/s, latency s) of the group's slowest level."""
    eff = hw.calibration.link_efficiency
    if group.nodes == 1:
        return hw.intra_node_bytes_per_s * eff, hw.intra_node_latency_s
    bw = min(hw.intra_node_bytes_per_s, group.local_size * hw.inter_node_bytes_per_s) * eff
    return bw, hw.inter_node_latency_s


def _latency(group: CommGroup, alpha_s: float, phases: int) -> float:
    n = group.size
    return phases * alpha_s * min(n - 1, math.ceil(math.log2(n)) + 1)


def collective_time_s(kind: str, buffer_bytes: float, group: CommGroup, hw: HardwareSpec) -> float:
    """Seconds for collective `kind` on a buffer of `buffer_bytes` (the full, unsharded buffer)."""
    if kind not in COLLECTIVES:
        raise ValueError(f"collective {kind!r} is not one of {', '.join(COLLECTIVES)}")
    n = group.size
    if kind == "p2p":
        if group.nodes == 1:
            return buffer_bytes / (hw.intra_node_bytes_per_s * hw.calibration.link_efficiency) + hw.intra_node_latency_s
        return buffer_bytes / (hw.inter_node_bytes_per_s * hw.calibration.link_efficiency) + hw.inter_node_latency_s
    if n == 1 or buffer_bytes <= 0:
        return 0.0
    bw, alpha = _bus(group, hw)
    if kind == "all_reduce":
        return 2 * (n - 1) / n * buffer_bytes / bw + _latency(group, alpha, 2)
    if kind in ("all_gather", "reduce_scatter"):
        return (n - 1) / n * buffer_bytes / bw + _latency(group, alpha, 1)
    # all_to_all: each rank sends (n-1)/n of its buffer; NVLink and NIC parts run concurrently
    eff = hw.calibration.link_efficiency
    intra = buffer_bytes * (group.local_size - 1) / n / (hw.intra_node_bytes_per_s * eff)
    inter = buffer_bytes * (n - group.local_size) / n / (hw.inter_node_bytes_per_s * eff)
    return max(intra, inter) + _latency(group, alpha, 1)
