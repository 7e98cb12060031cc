"""Hardware as data: one JSON file per device under cost_models/hardware/, loaded by name.

A `HardwareSpec` is one accelerator with its node (devices per node, the
intra-node link, the per-device share of the inter-node network) and the
few calibrated efficiencies the cost functions use. A `ClusterSpec` is a
count of one device type: "8xA100", "2048xH800".
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

DTYPES = ("bf16", "fp16", "fp32", "fp8")


@dataclass(frozen=True, slots=True, kw_only=True)
class Calibration:
    """Physical efficiencies of one device (dimensionless unless a unit is named)."""

    gemm_efficiency: float  # achieved / peak FLOP/s of a large GEMM
    attention_efficiency: float  # achieved / peak FLOP/s of flash attention (on the FLOPs it executes)
    memory_efficiency: float  # achieved / peak HBM bandwidth of memory-bound kernels
    kernel_overhead_s: float  # fixed cost per kernel (launch, tail wave)
    link_efficiency: float  # achieved / nominal bandwidth of collectives (NCCL bus bandwidth)
    dp_overlap: float  # share of gradient-sync time hidden behind backward compute
    mp_overlap: float  # share of tensor-parallel collective time hidden behind the adjacent GEMMs
    runtime_reserve_bytes: int  # CUDA context, communicator buffers, allocator fragmentation
    provenance: str = ""

    def __post_init__(self) -> None:
        for name in ("gemm_efficiency", "attention_efficiency", "memory_efficiency", "link_efficiency"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ValueError(f"calibration: {name} must be in (0, 1], got {value}")
        for name in ("dp_overlap", "mp_overlap"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"calibration: {name} must be in [0, 1], got {getattr(self, name)}")
        if self.kernel_overhead_s < 0 or self.runtime_reserve_bytes < 0:
            raise ValueError("calibration: kernel_overhead_s and runtime_reserve_bytes must be >= 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class HardwareSpec:
    """One accelerator type and the node it sits in."""

    name: str
    aliases: tuple[str, ...]
    vendor: str
    peak_flops: dict  # dtype -> FLOP/s (dense), None where the device lacks the type
    hbm_bytes_per_s: float
    memory_bytes: int
    devices_per_node: int
    intra_node_bytes_per_s: float  # per device, one direction
    intra_node_latency_s: float
    inter_node_bytes_per_s: float  # per device (its NIC share), one direction
    inter_node_latency_s: float
    intra_node_link: str
    calibration: Calibration
    sources: tuple[str, ...] = ()
    unverified: tuple[str, ...] = ()  # fields the sources leave unverified
    notes: str = ""

    def __post_init__(self) -> None:
        for name in ("hbm_bytes_per_s", "memory_bytes", "devices_per_node", "intra_node_bytes_per_s",
                     "inter_node_bytes_per_s"):
            value = getattr(self, name)
            if value is None or value <= 0:
                raise ValueError(f"hardware {self.name!r}: {name} must be > 0, got {value!r}")
        if not any(self.peak_flops.get(d) for d in DTYPES):
            raise ValueError(f"hardware {self.name!r}: no peak FLOP/s for any of {DTYPES}")

    def peak(self, dtype: str) -> float:
        """Dense peak FLOP/s for `dtype`; ValueError if the device lacks it."""
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        value = self.peak_flops.get(dtype)
        if not value:
            have = [d for d in DTYPES if self.peak_flops.get(d)]
            raise ValueError(f"{self.name} has no {dtype} peak; it supports {', '.join(have)}")
        return value

    def default_dtype(self) -> str:
        return "bf16" if self.peak_flops.get("bf16") else "fp16"

    @classmethod
    def from_dict(cls, data: dict) -> "HardwareSpec":
        return cls(
            name=data["name"], aliases=tuple(data.get("aliases", ())), vendor=data["vendor"],
            peak_flops=dict(data["peak_flops"]), hbm_bytes_per_s=data["hbm_bytes_per_s"],
            memory_bytes=data["memory_bytes"], devices_per_node=data["devices_per_node"],
            intra_node_bytes_per_s=data["intra_node"]["bytes_per_s"],
            intra_node_latency_s=data["intra_node"]["latency_s"],
            inter_node_bytes_per_s=data["inter_node"]["bytes_per_s"],
            inter_node_latency_s=data["inter_node"]["latency_s"],
            intra_node_link=data["intra_node"]["link"],
            calibration=Calibration(**data["calibration"]),
            sources=tuple(data.get("sources", ())), unverified=tuple(data.get("unverified", ())),
            notes=data.get("notes", ""))


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterSpec:
    """`num_devices` devices of one type, `devices_per_node` to a node."""

    hardware: HardwareSpec
    num_devices: int

    def __post_init__(self) -> None:
        if isinstance(self.num_devices, bool) or not isinstance(self.num_devices, int) or self.num_devices < 1:
            raise ValueError(f"cluster: device count must be a positive integer, got {self.num_devices!r}")

    @property
    def devices_per_node(self) -> int:
        return min(self.hardware.devices_per_node, self.num_devices)

    def __str__(self) -> str:
        return f"{self.num_devices}x{self.hardware.name}"


def _hardware_files() -> dict:
    folder = resources.files("cost_models") / "hardware"
    return {entry.name: entry for entry in folder.iterdir() if entry.name.endswith(".json")}


@lru_cache(maxsize=None)
def _catalog() -> dict:
    """Upper-case name or alias -> HardwareSpec."""
    catalog = {}
    for entry in sorted(_hardware_files().values(), key=lambda e: e.name):
        spec = HardwareSpec.from_dict(json.loads(entry.read_text()))
        for key in (spec.name, *spec.aliases):
            catalog[key.upper()] = spec
    return catalog


def device_names() -> tuple[str, ...]:
    """Canonical device names, sorted."""
    return tuple(sorted({spec.name for spec in _catalog().values()}))


def load_hardware(name: str) -> HardwareSpec:
    """The device called `name` or one of its aliases (case-insensitive)."""
    spec = _catalog().get(name.strip().upper())
    if spec is None:
        raise ValueError(f"unknown device {name!r}; known devices: {', '.join(device_names())} "
                         "(plan --list-devices shows aliases)")
    return spec


_DEVICES_RE = re.compile(r"^\s*(\d+)\s*[xX*]\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*$")


def parse_devices(text: str) -> ClusterSpec:
    """ClusterSpec from "NxDEVICE", e.g. "8xA100" or "2048xH800"."""
    match = _DEVICES_RE.match(text)
    if not match:
        raise ValueError(f"malformed device string {text!r}; expected COUNTxDEVICE such as 8xA100 or 2048xH800")
    count = int(match.group(1))
    if count < 1:
        raise ValueError(f"device count must be at least 1 in {text!r}")
    return ClusterSpec(hardware=load_hardware(match.group(2)), num_devices=count)
