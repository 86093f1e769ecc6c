"""The environment a job runs with, derived from its HardwareProfile in one place.

`networkInterface` names the interface collective communication uses; NCCL (and RCCL, which
reads the same variable) and gloo each take it in their own variable. A variable the profile sets
itself in `env` wins, so a site can still say something different on purpose.
"""
from __future__ import annotations

INTERFACE_VARS = ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME")


def job_env(hw: dict) -> dict[str, str]:
    env = {var: hw["networkInterface"] for var in INTERFACE_VARS} if hw.get("networkInterface") else {}
    env.update({k: str(v) for k, v in hw["env"].items()})
    return env
