"""Failures the runtime reports with their own exit code (runfolder.EXIT_*). Kept out of
__main__: under `python -m aam_runtime` that module is imported twice, as two different classes."""


class HardwareMissing(Exception):
    """The HardwareProfile asks for devices this machine does not have (EXIT_NO_HARDWARE)."""
