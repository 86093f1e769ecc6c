"""The record the controller wrote -> what one run needs to know (plus its W&B connection)."""
from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

from .runfolder import METRICS, RECORD


class RecordError(Exception):
    pass


class RunConfig:
    """Accessors over the resolved manifests of record.yaml (defaults already filled by aamctl)."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        path = self.dir / RECORD
        try:
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        except (OSError, yaml.YAMLError) as exc:
            raise RecordError(f"{path}: cannot read the run record ({exc})") from None
        runs = [d for d in docs if d.get("kind") == "Run" and "aam/record-of" in d["metadata"].get("annotations", {})]
        if not runs:
            raise RecordError(f"{path}: no Run annotated aam/record-of")
        self.run = runs[0]
        self.ann = self.run["metadata"].get("annotations", {})
        by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
        s = self.run["spec"]
        self.spec = s
        self.name = self.run["metadata"]["name"]
        self.generation = int(self.ann.get("aam/generation", "1"))
        self.dataset = by[("Dataset", s["datasetRef"])]["spec"]
        self.hardware = by[("HardwareProfile", s["hardwareRef"])]["spec"]
        model_name = self.ann.get("aam/model")
        self.model = by[("Model", model_name)]["spec"] if model_name and ("Model", model_name) in by else None
        self.labels = self.run["metadata"].get("labels", {})
        self.manifests = docs
        init = s.get("initFrom") or {}
        self.init_checkpoint = self.ann.get("aam/init-checkpoint") or init.get("checkpoint")
        self._wandb = None

    @property
    def stage(self) -> str:
        return self.spec["stage"]

    @property
    def trainer(self) -> dict:
        return self.spec["trainer"]

    @property
    def seed(self) -> int:
        return self.trainer["seed"]

    def target_name(self) -> str | None:
        if self.spec.get("target"):
            return self.spec["target"]
        t = self.dataset.get("targets") or []
        return t[0]["name"] if t else None

    def target_type(self, name) -> str | None:
        return next((t["type"] for t in self.dataset.get("targets", []) if t["name"] == name), None)

    def target_normalize(self, name) -> str:
        return next((t.get("normalize", "zscore") for t in self.dataset.get("targets", []) if t["name"] == name), "none")

    def loss_weight(self, name) -> float:
        return float(self.trainer["lossWeights"][name])

    def init_is_finetune(self) -> bool:
        return self.ann.get("aam/init-stage") == "finetune"

    def precision(self) -> str:
        p = self.trainer["precision"]
        if p == "auto":
            p = self.hardware["precision"]
        if p == "auto":
            if self.hardware["accelerator"] == "cpu":
                return "no"
            try:
                import torch
                return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
            except Exception:
                return "no"
        if p == "fp16" and self.hardware["accelerator"] == "cpu":
            return "no"
        return p

    def compile_enabled(self) -> bool:
        c = self.trainer["compile"]
        if self.hardware["accelerator"] == "rocm":
            if c == "on":
                print("warning: torch.compile fails on ROCm (inductor type error); running eagerly", flush=True)
            return False
        return c == "on" or (c == "auto" and self.hardware["compileAllowed"])

    # -- W&B (main process only; the key comes from the environment, never from us)

    def wandb_start(self, folder) -> None:
        wb = self.spec["logging"]["wandb"]
        if wb["mode"] == "disabled":
            return
        try:
            import wandb
        except ImportError:
            print(f"warning: wandb is not installed; metrics stay in {METRICS}", flush=True)
            return
        os.environ.setdefault("WANDB_SILENT", "true")
        tags = [f"{k}:{v}" for k, v in self.labels.items()] + list(wb.get("tags", [])) + [self.stage]
        run_id = re.sub(r"[^A-Za-z0-9_-]", "-", f"{self.name}-g{self.generation}-{self.ann.get('aam/run-hash', 'x')}")
        try:
            self._wandb = wandb.init(mode=wb["mode"], project=wb["project"], entity=wb.get("entity"),
                                     name=f"{self.name}-g{self.generation}", id=run_id, resume="allow",
                                     dir=str(folder.path), config={"manifests": self.manifests, "stage": self.stage},
                                     tags=[t[:64] for t in tags], job_type=self.stage, reinit=True)
            folder.update_status(wandb={"mode": wb["mode"], "id": run_id, "dir": str(folder.path / "wandb")})
        except Exception as exc:  # tracking must never kill training
            print(f"warning: W&B could not start ({exc}); metrics stay in {METRICS}", flush=True)
            self._wandb = None

    def wandb_log(self, row: dict, step: int | None = None) -> None:
        if self._wandb is not None:
            self._wandb.log(row, step=step)

    def wandb_finish(self, summary: dict | None = None, images: dict | None = None, exit_code: int = 0) -> None:
        if self._wandb is None:
            return
        try:
            import wandb
            if images:
                self._wandb.log({k: wandb.Image(str(v)) for k, v in images.items()})
            for k, v in (summary or {}).items():
                if isinstance(v, (int, float, str)):
                    self._wandb.summary[k] = v
            self._wandb.finish(exit_code=exit_code)
        except Exception as exc:
            print(f"warning: W&B finish failed ({exc})", flush=True)
        self._wandb = None

