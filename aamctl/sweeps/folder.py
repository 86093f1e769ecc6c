"""A sweep generation's folder, sweeps/<name>/<generation>/ in the state folder (aamctl/home.py):

  journal.log      Optuna's journal (the study <name>-g<generation>)
  controller.log   what the controller did
  controller.lock  held while a controller runs
  arrays/          SLURM array scripts, one per batch (<k>.sbatch, task output <k>-<task>.out)
  plots/           objective.png, parameters.png, importance.png
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from aam_runtime import runfolder as RF

JOURNAL = "journal.log"
CONTROLLER_LOG = "controller.log"
LOCK = "controller.lock"
ARRAYS = "arrays"
PLOTS = RF.PLOTS  # the same name as a run folder's


def controller_alive(folder: Path) -> bool:
    """Is a controller holding this generation's lock?"""
    try:
        fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
