"""The record the controller wrote -> what one run needs to know (plus its W&B connection)."""
from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

from aam_runtime.runfolder import METRICS, RECORD, RESOLVED_KEY, TENSORBOARD
from aam_runtime.scratch import staged_paths


class RecordError(Exception):
    pass


class RunConfig:
    """Accessors over record.yaml: the resolved manifests (defaults filled by aamctl) and the main
    Run's `resolved:` section (effective model, starting checkpoint, precision, generation)."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        path = self.dir / RECORD
        try:
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        except (OSError, yaml.YAMLError) as exc:
            raise RecordError(f"{path}: cannot read the run record ({exc})") from None
        runs = [d for d in docs if isinstance(d, dict) and d.get("kind") == "Run" and RESOLVED_KEY in d]
        if not runs:
            raise RecordError(f"{path}: no Run with a '{RESOLVED_KEY}:' section; was it written by aamctl apply?")
        self.run = runs[0]
        settings = self.run[RESOLVED_KEY]
        by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
        s = self.run["spec"]
        self.spec = s
        self.name = self.run["metadata"]["name"]
        self.generation = int(settings["generation"])
        self.run_hash = settings["runHash"]
        self.dataset = by[("Dataset", s["datasetRef"])]["spec"]
        self.staged = self._read_staged()
        self.hardware = by[("HardwareProfile", s["hardwareRef"])]["spec"]
        self.model = (settings.get("model") or {}).get("spec")
        init = settings.get("initCheckpoint")
        # a list for an ensemble (predict with initFrom.runs); init_checkpoint is the first
        self.init_checkpoints = list(init) if isinstance(init, list) else [init] if init else []
        self.init_checkpoint = self.init_checkpoints[0] if self.init_checkpoints else None
        self.init_stage = settings.get("initStage")
        self.precision = settings["precision"]
        self.labels = self.run["metadata"].get("labels", {})
        self.manifests = docs
        self._wandb = None
        self._tensorboard = None

    def _read_staged(self) -> dict[str, str]:
        """HardwareProfile.scratch: read the Dataset's files from the node-local copies the job
        staged (aam_runtime.scratch); the record keeps the shared paths."""
        copies = staged_paths()
        if not copies:
            return {}
        ds = self.dataset = dict(self.dataset)
        for key in ("table", "tree", "distanceMatrix"):
            if ds.get(key) in copies:
                ds[key] = copies[ds[key]]
        meta = ds.get("metadata") or {}
        if meta.get("path") in copies:
            ds["metadata"] = dict(meta, path=copies[meta["path"]])
        return copies

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
        """The run's target (with several targets: the first, which stratifies the split)."""
        if self.spec.get("target"):
            return self.spec["target"]
        if self.spec.get("targets"):
            return self.spec["targets"][0]["name"]
        t = self.dataset["targets"]
        return t[0]["name"] if t else None

    def target_list(self) -> list[dict] | None:
        """spec.targets (a finetune run with several targets): each entry joined with its Dataset
        declaration, {name, type, normalize, normalizeBy, weight, loss}; None with one target."""
        if not self.spec.get("targets"):
            return None
        declared = {t["name"]: t for t in self.dataset["targets"]}
        return [{**declared[t["name"]], "weight": float(t.get("weight", 1.0)), "loss": t.get("loss")}
                for t in self.spec["targets"]]

    def target_type(self, name) -> str | None:
        return next((t["type"] for t in self.dataset["targets"] if t["name"] == name), None)

    def target_normalize(self, name) -> str:
        """The declared scaling of a target ('none' for a column the Dataset does not declare)."""
        return next((t["normalize"] for t in self.dataset["targets"] if t["name"] == name), "none")

    def target_normalize_by(self, name) -> str | None:
        return next((t.get("normalizeBy") for t in self.dataset["targets"] if t["name"] == name), None)

    def loss_weight(self, name) -> float:
        return float(self.trainer["lossWeights"].get(name, 0.0))  # records older than the field: off

    def init_is_finetune(self) -> bool:
        return self.init_stage == "finetune"

    def compile_enabled(self) -> bool:
        c = self.trainer["compile"]
        if self.hardware["accelerator"] == "rocm":
            if c == "on":
                print("warning: torch.compile fails on ROCm (inductor type error); running eagerly", flush=True)
            return False
        return c == "on" or (c == "auto" and self.hardware["compileAllowed"])

    # -- tracking: W&B and TensorBoard (main process only; a W&B key comes from the environment,
    # never from us). Tracking never kills training: a tracker that fails is dropped with a warning.

    def tracking_start(self, folder) -> None:
        self._wandb_start(folder)
        self._tensorboard_start(folder)

    def tracking_log(self, row: dict, step: int | None = None) -> None:
        if self._wandb is not None:
            self._wandb.log(row, step=step)
        if self._tensorboard is not None:
            try:
                self._tensorboard.log({k: v for k, v in row.items() if isinstance(v, (int, float))}, step=step)
            except Exception as exc:
                print(f"warning: TensorBoard logging failed ({exc}); it stops for this run", flush=True)
                self._tensorboard = None

    def tracking_finish(self, summary: dict | None = None, images: dict | None = None, exit_code: int = 0) -> None:
        self._tensorboard_finish()
        self._wandb_finish(summary, images, exit_code)

    def _tensorboard_start(self, folder) -> None:
        """logging.tensorboard: event files under the run folder's tensorboard/, through
        accelerate's tracker (torch.utils.tensorboard's SummaryWriter)."""
        if not self.spec["logging"].get("tensorboard"):
            return
        try:
            from accelerate.tracking import TensorBoardTracker

            tracker = TensorBoardTracker(f"{self.name}-g{self.generation}", str(folder.path / TENSORBOARD))
            tracker.start()
            self._tensorboard = tracker
            folder.update_status(tensorboard={"dir": str(folder.path / TENSORBOARD)})
        except Exception as exc:  # e.g. the tensorboard package is missing
            print(f"warning: TensorBoard could not start ({type(exc).__name__}: {exc}); metrics stay in {METRICS}",
                  flush=True)
            self._tensorboard = None

    def _tensorboard_finish(self) -> None:
        if self._tensorboard is None:
            return
        try:
            self._tensorboard.finish()
        except Exception as exc:
            print(f"warning: TensorBoard finish failed ({exc})", flush=True)
        self._tensorboard = None

    def _wandb_start(self, folder) -> None:
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
        run_id = re.sub(r"[^A-Za-z0-9_-]", "-", f"{self.name}-g{self.generation}-{self.run_hash}")
        try:
            self._wandb = wandb.init(mode=wb["mode"], project=wb["project"], entity=wb.get("entity"),
                                     name=f"{self.name}-g{self.generation}", id=run_id, resume="allow",
                                     dir=str(folder.path), config={"manifests": self.manifests, "stage": self.stage},
                                     tags=[t[:64] for t in tags], job_type=self.stage, reinit=True)
            folder.update_status(wandb={"mode": wb["mode"], "id": run_id, "dir": str(folder.path / "wandb")})
        except Exception as exc:  # tracking must never kill training
            print(f"warning: W&B could not start ({exc}); metrics stay in {METRICS}", flush=True)
            self._wandb = None

    def _wandb_finish(self, summary: dict | None = None, images: dict | None = None, exit_code: int = 0) -> None:
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

