"""aamctl: the controller for AAM manifests (never imports torch)."""

__version__ = "0.1.0"
