"""What one benchmark run is asked to do: the CLI (``__main__``) builds a :class:`Config`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Config:
    """Everything one run needs (see ``--help`` for each knob)."""

    hosts: tuple[int, ...]
    pools_per_host: int = 8
    hosts_per_pool: int = 16
    mode: str = "stream"
    duration: float = 20.0
    warmup: float = 3.0
    idle: float = 3.0
    interval: float = 0.0
    concurrency: int = 48
    generators: int = 2
    change_fraction: float = 0.001
    naive_hosts: int = 1000
    naive_duration: float = 8.0
    ceiling: bool = True
    ceiling_duration: float = 10.0
    betterproto2_ceiling: bool = True
    heartbeat_interval: float = 30.0
    grace: float = 600.0
    seed: int = 1
    workdir: Path | None = None
    keep: bool = False
    profile_dir: Path | None = None
    quick: bool = False
