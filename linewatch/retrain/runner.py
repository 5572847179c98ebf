"""One retraining run from start to end, and rollback: gather -> train in a child process -> gate -> swap.

Order of the steps on success, chosen so a crash at any point leaves a loadable active model: the
candidate is published (renamed into ``models/<line>/<version>``) and loaded *before* ``active.json``
names it, and the scorer swaps to it only after that; the store is told last (it may be down; the file
is the truth). A rejected, crashed or timed-out candidate never reaches the scorer and its folder is
deleted; the run, its reason and its numbers stay in the store and on ``model/state``.

The confirmed normals a gated run used (accepted or rejected) are marked ``trained_into`` the candidate,
so a batch of mislabelled images fails once instead of every night; a crash or timeout marks nothing
(the same normals are tried again).
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from linewatch.anople.artifact import ArtifactError, read_manifest
from linewatch.clock import Clock
from linewatch.config import Config
from linewatch.retrain.child import ChildSpec
from linewatch.retrain.gate import choose_shots, gate, gate_evidence, recalibrated_threshold, split_holdout
from linewatch.retrain.launch import ChildCommand, RunFailed, child_command, run_child
from linewatch.retrain.store import (
    LabelledImage,
    activate_version,
    confirmed_images,
    fail_interrupted_runs,
    finish_run,
    mark_trained,
    record_version,
    start_run,
)
from linewatch.retrain.version_files import copy_recalibrated, created_at_of, manifest_sha256, recorded_images
from linewatch.retrain.versions import ModelRegistry, RegistryBusy, RegistryError, model_version
from linewatch.sinks.db import DatabaseError

log = logging.getLogger(__name__)

MAX_NEW_NORMALS = 200  # per product and run, the newest; more adds time, not information
MAX_GATE_DEFECTS = 200  # the newest confirmed defects judge a candidate
MAX_REFERENCE_NORMALS = 32  # per product: calibration normals a version carries on to the next one


@dataclass(frozen=True)
class RetrainOutcome:
    status: str  # accepted | rejected | failed | skipped | recalibrated | busy | rolled_back
    reason: str
    run_id: int | None = None
    version: str | None = None  # the candidate (or the version now active after a rollback/recalibration)
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "reason": self.reason,
            "run_id": self.run_id,
            "version": self.version,
            "metrics": self.metrics,
        }


class Retrainer:
    """Runs retraining and rollback for one line. ``load(path)`` builds a scorer for an artifact (raising
    if it cannot), ``swap(loaded, path, version)`` puts it into service between batches, ``publish(info)``
    reports progress on ``model/state``; ``active_thresholds()`` are the thresholds in force now (config
    overrides included). ``command`` starts the training process (tests inject failing ones)."""

    def __init__(
        self,
        config: Config,
        registry: ModelRegistry,
        engine: Any,
        clock: Clock,
        load: Callable[[Path], Any],
        swap: Callable[[Any, Path, str], None],
        publish: Callable[[dict[str, Any]], None],
        active_thresholds: Callable[[], dict[str, float]],
        stop: threading.Event,
        command: ChildCommand = child_command,
    ) -> None:
        self.config = config
        self.registry = registry
        self.engine = engine
        self.clock = clock
        self._load = load
        self._swap = swap
        self._publish = publish
        self._active_thresholds = active_thresholds
        self._stop = stop
        self._command = command

    # ---- retraining ----------------------------------------------------------------------------
    def run(self, trigger: str) -> RetrainOutcome:
        """One run, start to end; ``busy`` when another run (any process) holds the training lock."""
        try:
            with self.registry.training_lock():
                return self._locked_run(trigger)
        except RegistryBusy:
            # Not published: model/state keeps showing the run that is going (possibly another process's).
            log.warning("retrain (%s): another retraining is running; not starting a second", trigger)
            return RetrainOutcome("busy", "another retraining is running; not starting a second")
        except OSError as problem:  # the versions folder cannot hold the lock (read-only, full)
            outcome = RetrainOutcome("failed", f"cannot take the training lock in {self.registry.root}: {problem}")
            log.error("retrain (%s): %s", trigger, outcome.reason)
            self._report(trigger, outcome)
            return outcome

    def _locked_run(self, trigger: str) -> RetrainOutcome:
        started = self.clock.now()
        try:
            if closed := fail_interrupted_runs(self.engine, started):
                log.warning("retrain: %d run(s) left running by an earlier daemon closed as failed", closed)
            run_id = start_run(self.engine, trigger, started)
        except DatabaseError as problem:
            outcome = RetrainOutcome("failed", f"store unreachable, nothing to train from: {problem}")
            self._report(trigger, outcome)
            return outcome
        try:
            self._report(trigger, RetrainOutcome("running", "gathering confirmed normals", run_id))
            outcome = self._train_or_recalibrate(trigger, run_id)
        except RunFailed as failure:
            outcome = RetrainOutcome("failed", str(failure), run_id)
        except (DatabaseError, RegistryError, ArtifactError, OSError) as problem:
            outcome = RetrainOutcome("failed", f"{type(problem).__name__}: {problem}", run_id)
        except Exception as problem:  # a bug must still end the run on record, not leave it "running"
            log.exception("retrain run %d failed unexpectedly", run_id)
            outcome = RetrainOutcome("failed", f"internal error: {type(problem).__name__}: {problem}", run_id)
        except BaseException:  # Ctrl-C in `linewatch retrain`: record the end, then let it through
            self._finish(run_id, RetrainOutcome("failed", "interrupted", run_id))
            raise
        self._finish(run_id, outcome)
        self._report(trigger, outcome)
        return outcome

    def _finish(self, run_id: int, outcome: RetrainOutcome) -> None:
        try:
            finish_run(
                self.engine,
                run_id,
                outcome.status,
                outcome.reason,
                outcome.version,
                outcome.metrics or None,
                self.clock.now(),
            )
        except DatabaseError as problem:
            log.error("retrain run %d: could not record its end (%s)", run_id, problem)

    def _train_or_recalibrate(self, trigger: str, run_id: int) -> RetrainOutcome:
        active = self.registry.active()
        manifest = read_manifest(active)
        products = [entry["name"] for entry in manifest["products"]]
        normals = self._with_files(confirmed_images(self.engine, "normal", untrained_only=True), products)
        defects = self._with_files(confirmed_images(self.engine, "defect", untrained_only=False), products)
        defects = defects[-MAX_GATE_DEFECTS:]
        minimum = self.config.retrain.min_new_normals
        gathered = {product: [item for item in normals if item[0].product == product] for product in products}
        new = {product: items[-MAX_NEW_NORMALS:] for product, items in gathered.items()}
        counts = {product: len(items) for product, items in gathered.items()}
        if all(count < minimum for count in counts.values()):
            why = ", ".join(f"{product!r} {count}" for product, count in counts.items())
            note = f"too few new confirmed normals to train ({why}; need {minimum} for a product)"
            if self.config.retrain.recalibrate:
                return self._recalibrate(run_id, active, manifest, new, defects, note)
            return RetrainOutcome("skipped", note, run_id, metrics={"new_normals": counts})
        # Beyond the newest MAX_NEW_NORMALS, older confirmed normals are superseded: marked with the rest, so
        # retention stops keeping their images for a retrain that will never use them.
        superseded = [item.inspection_id for items in gathered.values() for item, _ in items[:-MAX_NEW_NORMALS]]
        return self._train(trigger, run_id, active, manifest, new, defects, superseded)

    def _with_files(self, items: list[LabelledImage], products: list[str]) -> list[tuple[LabelledImage, Path]]:
        """Labelled inspections whose evidence image still exists, for products this model knows."""
        root = self.config.evidence_dir
        found, missing, foreign = [], 0, 0
        for item in items:
            path = root / item.snapshot
            if item.product not in products:
                foreign += 1
            elif path.is_file():
                found.append((item, path))
            else:
                missing += 1
        if missing or foreign:
            log.warning(
                "retrain: %d confirmed image(s) skipped: %d evidence file(s) gone, %d of products the model lacks",
                missing + foreign,
                missing,
                foreign,
            )
        return found

    def _train(
        self,
        trigger: str,
        run_id: int,
        active: Path,
        manifest: dict[str, Any],
        new: dict[str, list[tuple[LabelledImage, Path]]],
        defects: list[tuple[LabelledImage, Path]],
        superseded: list[str],
    ) -> RetrainOutcome:
        settings = self.config.retrain
        previous = recorded_images(active, manifest, "shots")
        # The normals the active version was calibrated on: the appearance the line had until now. The
        # candidate is calibrated and judged on them as well as on the new held-out ones, so it cannot be
        # accepted for fitting the new appearance by forgetting the old one.
        reference = recorded_images(active, manifest, "calibration_images")
        shots: dict[str, list[str]] = {}
        holdout: dict[str, list[str]] = {}
        used: list[str] = list(superseded)
        for product, items in new.items():
            if len(items) >= settings.min_new_normals:
                train_part, held_part = split_holdout(items, settings.holdout_fraction, settings.seed + run_id)
                chosen = choose_shots(previous[product], [path for _, path in train_part], settings.max_shots)
                held = [path for _, path in held_part]
                used.extend(item.inspection_id for item, _ in items)
            else:  # trained on its old shots; judged on whatever few confirmed normals it has
                chosen = previous[product]
                held = [path for _, path in items]
            room = max(0, MAX_REFERENCE_NORMALS - len(held))  # the newest of the old appearance, as room allows
            kept = reference[product][len(reference[product]) - room :] if room else []
            holdout[product] = [str(path) for path in (*kept, *held)]
            shots[product] = [str(path) for path in chosen]
        final = self.registry.new_version_dir(self.clock.now())
        work = self._work_dir(final.name)
        candidate_dir = self.registry.staging_dir(final)
        try:
            spec = self._spec("train", active, work, holdout, defects, shots=shots, out=candidate_dir)
            self._report(trigger, RetrainOutcome("training", f"training {final.name} in a child process", run_id))
            report = self._run_child(spec, work)
            # judged at the thresholds each would serve at: config overrides win over a calibration
            serving = {**report["candidate"]["thresholds"], **self.config.model.thresholds}
            defect_products = [item.product for item, _ in defects]
            result = gate(
                gate_evidence(report["active"], holdout, defect_products, report["active"]["thresholds"]),
                gate_evidence(report["candidate"], holdout, defect_products, serving),
                settings.frr_margin,
            )
            metrics = {
                "gate": result.to_dict(),
                "thresholds": report["candidate"]["thresholds"],
                "training_s": report["candidate"]["duration_s"],
                "shots": {product: len(paths) for product, paths in shots.items()},
                "new_normals": {product: len(items) for product, items in new.items()},
            }
            if not result.accepted:
                return self._reject(run_id, final, candidate_dir, used, result.reason, metrics)
            self.registry.publish(candidate_dir, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(candidate_dir, ignore_errors=True)  # gone already when published
        version = self._activate_new(final, metrics)
        self._mark(used, version)
        self._prune()
        log.info("retrain: %s accepted and active: %s", version, result.reason)
        return RetrainOutcome("accepted", result.reason, run_id, version, metrics)

    def _reject(
        self,
        run_id: int,
        final: Path,
        candidate_dir: Path,
        used: list[str],
        reason: str,
        metrics: dict[str, Any],
    ) -> RetrainOutcome:
        version = f"{final.name}@{manifest_sha256(candidate_dir)[:10]}"
        try:  # recorded under the folder it would have had; the folder itself is deleted
            self._record(candidate_dir, version, str(final), "failed", reason, metrics, self.clock.now())
        except DatabaseError as problem:
            log.error("retrain: could not record the rejected version %s (%s)", version, problem)
        self._mark(used, version)
        log.warning("retrain: candidate %s rejected by the gate: %s", version, reason)
        return RetrainOutcome("rejected", reason, run_id, version, metrics)

    def _prune(self) -> None:
        """Old versions beyond ``keep_versions`` go; a failure here is logged, the new version serves anyway."""
        keep = self.config.retrain.keep_versions
        try:
            for pruned in self.registry.prune(keep):
                log.info("retrain: removed old version %s (keeping %d)", pruned.name, keep)
        except (OSError, RegistryError) as problem:
            log.error("retrain: could not remove old versions (%s)", problem)

    def _work_dir(self, name: str) -> Path:
        """A fresh folder for the spec, the report and the training log; leftovers of runs that a crash or
        kill interrupted are removed first (the caller holds the training lock, so none is in use)."""
        for stale in self.registry.root.glob(".work-*"):
            shutil.rmtree(stale, ignore_errors=True)
        work = self.registry.root / f".work-{name}"
        work.mkdir(parents=True)
        return work

    def _mark(self, used: list[str], version: str) -> None:
        try:
            mark_trained(self.engine, used, version)
        except DatabaseError as problem:
            log.error("retrain: could not mark %d confirmed normals as used by %s (%s)", len(used), version, problem)

    def _spec(
        self,
        mode: str,
        active: Path,
        work: Path,
        holdout: dict[str, list[str]],
        defects: list[tuple[LabelledImage, Path]],
        shots: dict[str, list[str]] | None = None,
        out: Path | None = None,
    ) -> Path:
        config = self.config
        grouped: dict[str, list[str]] = {product: [] for product in holdout}
        for item, path in defects:
            grouped.setdefault(item.product, []).append(str(path))
        spec = ChildSpec(
            mode=mode,  # type: ignore[arg-type]
            active=str(active),
            models_dir=str(config.model.models_dir),
            weights=None if config.model.weights is None else str(config.model.weights),
            device=config.model.device,
            threads=config.retrain.cpu_threads,
            seed=config.retrain.seed,
            steps=config.retrain.steps,
            target_frr=config.model.target_frr,
            active_thresholds=self._active_thresholds(),
            report=str(work / "report.json"),
            out=None if out is None else str(out),
            parent_version=model_version(active),
            shots=shots or {},
            holdout=holdout,
            defects=grouped,
        )
        path = work / "spec.json"
        spec.write(path)
        return path

    def _run_child(self, spec: Path, work: Path) -> dict[str, Any]:
        settings = self.config.retrain
        return run_child(self._command, spec, work, settings.time_limit_s, settings.cpu_threads, self._stop)

    # ---- threshold recalibration ---------------------------------------------------------------
    def _recalibrate(
        self,
        run_id: int,
        active: Path,
        manifest: dict[str, Any],
        new: dict[str, list[tuple[LabelledImage, Path]]],
        defects: list[tuple[LabelledImage, Path]],
        note: str,
    ) -> RetrainOutcome:
        """Too few normals to train: move each product's calibrated threshold toward what its confirmed
        normals ask for, a bounded step, as a new version (so it is recorded and can be rolled back)."""
        settings = self.config.retrain
        overrides = self.config.model.thresholds
        normals = {
            product: [str(path) for _, path in items]
            for product, items in new.items()
            if len(items) >= settings.min_recalibration_normals and product not in overrides
        }
        if not normals:
            return RetrainOutcome("skipped", f"{note}; too few to recalibrate either", run_id)
        work = self._work_dir(f"recalibrate-{run_id}")
        try:
            report = self._run_child(self._spec("score", active, work, normals, defects), work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        calibrated = {entry["name"]: entry["calibration"]["threshold"] for entry in manifest["products"]}
        changes, reasons = {}, []
        for product, paths in normals.items():
            decision = recalibrated_threshold(
                calibrated[product],
                np.asarray(report["active"]["holdout"][product]),
                np.asarray(report["active"]["defects"].get(product, [])),
                self.config.model.target_frr,
                settings.max_threshold_step,
            )
            reasons.append(f"{product!r}: {decision.reason}")
            if decision.changed:
                changes[product] = (decision.threshold, len(paths))
        reason = f"{note}; {'; '.join(reasons)}"
        metrics = {"thresholds": {product: value for product, (value, _) in changes.items()}}
        if not changes:
            return RetrainOutcome("skipped", reason, run_id, metrics=metrics)
        final = self.registry.new_version_dir(self.clock.now())
        staging = self.registry.staging_dir(final)
        copy_recalibrated(active, staging, changes, model_version(active), self.clock.now())
        self.registry.publish(staging, final)
        version = self._activate_new(final, metrics)
        self._prune()
        log.info("retrain: threshold recalibrated, %s active: %s", version, reason)
        return RetrainOutcome("recalibrated", reason, run_id, version, metrics)

    # ---- activation and rollback ---------------------------------------------------------------
    def _activate_new(self, directory: Path, metrics: dict[str, Any]) -> str:
        """Activate a version this run just published; one that does not load is deleted again."""
        try:
            return self._activate(directory, metrics)
        except RunFailed:
            self.registry.discard(directory)
            raise

    def _activate(self, directory: Path, metrics: dict[str, Any] | None, refresh: bool = True) -> str:
        """Load, make active on disk, swap into the scorer, then tell the store. Loading first: a version
        that does not load never becomes active, not even after a restart."""
        version = model_version(directory)
        try:
            loaded = self._load(directory)
        except Exception as problem:
            raise RunFailed(f"{directory.name} does not load: {problem}") from problem
        self.registry.activate(directory)
        self._swap(loaded, directory, version)
        self.record_active(directory, metrics, refresh)
        return version

    def record_active(
        self, directory: Path, metrics: dict[str, Any] | None = None, refresh: bool = True, report: bool = True
    ) -> bool:
        """Write the store's row of the active version (``refresh``: rewrite it if it exists, else keep the row's
        gate numbers and reason) and mark it active. False when the store is down (logged if ``report``)."""
        version = model_version(directory)
        now = self.clock.now()
        try:
            self._record(directory, version, str(directory), "active", None, metrics, None, keep_existing=not refresh)
            activate_version(self.engine, version, now)
        except DatabaseError as problem:
            if report:
                log.error("model %s is active but the store could not record it (%s)", version, problem)
            return False
        return True

    def _record(
        self,
        directory: Path,
        version: str,
        artifact_path: str,
        status: str,
        reason: str | None,
        metrics: dict[str, Any] | None,
        created_at: datetime | None,
        keep_existing: bool = False,
    ) -> None:
        """The store's row of the artifact in ``directory``, its thresholds and backbone read from its manifest;
        ``created_at`` defaults to the manifest's, ``metrics`` to the manifest's."""
        manifest = read_manifest(directory)
        record_version(
            self.engine,
            version=version,
            artifact_path=artifact_path,
            backbone=manifest["backbone"]["model_name"],
            backbone_sha256=manifest["backbone"]["weights_sha256"],
            manifest_sha256=manifest_sha256(directory),
            thresholds={entry["name"]: entry["calibration"]["threshold"] for entry in manifest["products"]},
            metrics=metrics if metrics is not None else manifest.get("metrics") or None,
            status=status,
            reason=reason,
            created_at=created_at or created_at_of(manifest, self.clock.now()),
            keep_existing=keep_existing,
        )

    def rollback(self, version: str | None, by: str | None = None) -> RetrainOutcome:
        """Put a previous version back into service (the one before the active one by default); ``by`` says who
        asked (``web: ana``, ``http``), for the record: the log, the news on ``model/state``, the answer."""
        try:
            with self.registry.training_lock():
                target = self.registry.rollback_target(version)
                restored = self._activate(target, None, refresh=False)
        except RegistryBusy:
            return RetrainOutcome("busy", "a retraining is running; roll back after it ends")
        except RunFailed as failure:
            return RetrainOutcome("failed", str(failure))
        asked = f" (rolled back by {by})" if by else ""
        outcome = RetrainOutcome("rolled_back", f"{restored} is active again{asked}", version=restored)
        log.warning("model rolled back: %s", outcome.reason)
        self._report(f"rollback: {by}" if by else "rollback", outcome)
        return outcome

    def _report(self, trigger: str, outcome: RetrainOutcome) -> None:
        self._publish({**outcome.to_dict(), "trigger": trigger, "at": self.clock.now().isoformat()})
