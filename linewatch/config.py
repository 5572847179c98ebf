"""The one configuration tree: a TOML file validated by pydantic, unknown keys rejected.

Every error names the key path and what is allowed. Numbers and strings are strict (TOML has types:
``steps = true`` or ``shots = "3"`` is a mistake to report, not to coerce); paths accept strings.
Sections: ``[site]`` (names and the data folder), ``[model]`` (which artifact and backbone, on which
device), ``[scoring]`` (batching), ``[events]`` (defect episodes), ``[journal]``, ``[store]`` (the SQL
database), ``[mqtt]`` (the broker), ``[evidence]`` (snapshots and heatmaps on disk), ``[http]`` (the
metrics/feedback port), ``[web]`` (the operator's page on that port), ``[retrain]`` (retraining from
confirmed normals), ``[[cameras]]``, ``[[stations]]`` (cameras that see the same part), ``[opcua]`` (the
OPC UA server) and ``[demo]`` (the synthetic run behind ``linewatch demo``).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from linewatch.config_checks import Number, check_cron, check_public_url, check_timezone, is_loopback
from linewatch.config_secrets import SecretError, resolve_secrets


class ConfigError(ValueError):
    """An unusable configuration file; the message lists every bad key with what is allowed."""


MAX_DISK_MB = 1e9  # a petabyte: a watermark beyond it is a typo
MAX_SYNTHETIC_SIDE = 8192  # pixels; the synthetic camera draws every frame in memory


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSection(_Section):
    path: Path = Path("models/demo")  # the model (artifact folder) the daemon scores with
    models_dir: Path = Path("models")  # backbone weights: <models_dir>/backbones/<model>/<tag>.safetensors
    backbone: StrictStr = "ViT-B-16-plus-240"  # open_clip model name
    pretrained: StrictStr = "laion400m_e32"  # pretrained tag; "none" = random weights (demo, tests)
    weights: Path | None = None  # an explicit .safetensors file instead of models_dir
    device: StrictStr = "cpu"  # "cpu" or "cuda[:N]" (runtime "torch")
    target_frr: Number = Field(0.01, ge=0.0, lt=1.0)  # share of normal parts rejected at the calibrated threshold
    thresholds: dict[StrictStr, Number] = {}  # per product, replaces the calibrated threshold; SIGHUP reloads it

    @model_validator(mode="before")
    @classmethod
    def _precision_moved(cls, data: object) -> object:
        if isinstance(data, dict) and "precision" in data:
            raise ValueError('precision moved to [scoring] precision (with [scoring] runtime = "torch" | "openvino")')
        return data


class DemoSection(_Section):
    model_path: Path = Path("data/demo/model")  # its own model: demo parts are square, camera frames are not
    data_dir: Path = Path("data/demo")  # its synthetic images and report
    product: StrictStr = "demo part"  # the product name of the demo model
    train_normals: StrictInt = Field(16, ge=1)  # synthetic normals drawn for training and calibration
    shots: StrictInt = Field(4, ge=1)  # of them, used for the prompts and the memory bank
    steps: StrictInt = Field(200, ge=1)  # training steps (a first start waits for them)
    test_normals: StrictInt = Field(20, ge=1)  # `linewatch demo` scores this many normals ...
    test_defects_per_kind: StrictInt = Field(5, ge=1)  # ... and this many parts of each defect kind
    seed: StrictInt = 0  # of the synthetic parts and the training


_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"  # goes into MQTT topics and file names


class SiteSection(_Section):
    site: StrictStr = Field("site", pattern=_NAME)  # the plant; in MQTT topics, metrics and log lines
    line: StrictStr = Field("line1", pattern=_NAME)  # the line this daemon inspects; likewise
    data_dir: Path = Path("data")  # journal, SQL store, evidence and bootstrap images


class ScoringSection(_Section):
    batch_max_size: StrictInt = Field(8, ge=1, le=1024)  # a batch is cut when this many frames wait
    # 0: take what waits as soon as the scorer is free; batches still fill with what arrives while it works.
    # Waiting longer adds latency one for one and bought no throughput (benchmarks/pipeline_throughput.py).
    batch_max_wait_ms: Number = Field(0.0, ge=0.0, le=10_000.0)
    bootstrap_demo_model: StrictBool = False  # train a tiny random-weight demo model when [model].path is missing
    cpu_threads: StrictInt = Field(0, ge=0)  # torch and OpenVINO threads for CPU scoring; 0 = all cores but one
    # openvino: the exported graph, CPU only (docs/model.md); triton: a scoring server ([triton], docs/serving.md)
    runtime: Literal["torch", "openvino", "triton"] = "torch"
    # torch: fp32, or bf16/fp16 on CUDA; openvino: fp32, bf16 (CPUs with bf16) or int8, each with its own threshold;
    # triton: the precision of the local fallback ([triton] local_runtime); the server scores in its own
    precision: Literal["fp32", "bf16", "fp16", "int8"] = "fp32"


LOCAL_PRECISIONS = {"torch": ("fp32", "bf16", "fp16"), "openvino": ("fp32", "bf16", "int8")}


WATCHDOG_BUDGET_S = 30.0  # deploy/systemd/linewatch.service: WatchdogSec=60, pinged every half of it


class TritonSection(_Section):
    """A remote scoring server ([scoring] runtime = "triton"): linewatch serve or a stock Triton server."""

    url: StrictStr = "127.0.0.1:8001"  # host:port of the server's gRPC endpoint
    model: StrictStr = Field("linewatch", pattern=r"^[A-Za-z0-9_.-]+$")  # the Triton model to call
    # one remote call: far under the watchdog (a batch must be journaled within WatchdogSec/2, 30 s as shipped)
    deadline_ms: Number = Field(2000.0, gt=0.0, le=10_000.0)
    load_timeout_s: Number = Field(120.0, gt=0.0, le=3600.0)  # activation: the server loads a version (a while)
    hold_s: Number = Field(10.0, ge=0.0, le=15.0)  # server unreachable: a batch waits this long, then the fallback
    retry_s: Number = Field(5.0, gt=0.0, le=60.0)  # while unreachable: how often the server is tried again
    # local: score on this PC (model.device, local_runtime, [scoring] precision) until the server is back;
    # none: frames wait in the cameras' bounded queues (the oldest dropped by policy, counted) for the server
    fallback: Literal["local", "none"] = "local"
    local_runtime: Literal["torch", "openvino"] = "torch"  # the fallback's runtime; openvino needs device "cpu"
    ca_file: Path | None = None  # TLS: the CA that signed the server's certificate (gRPC over TLS when set)
    cert_file: Path | None = None  # mutual TLS: this line's client certificate (with key_file)
    key_file: Path | None = None  # mutual TLS: the private key of cert_file

    @model_validator(mode="after")
    def _tls_files_together(self) -> TritonSection:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (mutual TLS)")
        if self.cert_file is not None and self.ca_file is None:
            raise ValueError("cert_file needs ca_file: mutual TLS runs over TLS")
        # A batch that loses the server: its call, the hold, one more call, all within WatchdogSec / 2.
        worst_s = 2 * self.deadline_ms / 1000 + self.hold_s
        if worst_s > WATCHDOG_BUDGET_S:
            raise ValueError(
                f"2 x deadline_ms + hold_s is {worst_s:g} s: a batch could wait longer than the watchdog's "
                f"{WATCHDOG_BUDGET_S:g} s for the server; shorten deadline_ms or hold_s"
            )
        return self


class EventsSection(_Section):
    debounce_n: StrictInt = Field(2, ge=1)  # a defect episode opens when n of the last m verdicts are defects
    debounce_m: StrictInt = Field(3, ge=1)  # m: the window of debounce_n
    end_after_s: Number = Field(5.0, gt=0.0, le=3600.0)  # an episode ends after this long without a defect
    update_min_interval_s: Number = Field(1.0, ge=0.0, le=3600.0)  # open episode: higher scores, this often at most

    @model_validator(mode="after")
    def _n_within_m(self) -> EventsSection:
        if self.debounce_n > self.debounce_m:
            raise ValueError(f"debounce_n ({self.debounce_n}) must not exceed debounce_m ({self.debounce_m})")
        return self


class JournalSection(_Section):
    path: Path | None = None  # default: <data_dir>/journal.sqlite3
    forwarder_batch: StrictInt = Field(64, ge=1)  # records handed to a forwarder at once
    log_records: StrictBool = False  # also log one line per journaled record (bench work; noisy on a line)
    keep_days: Number = Field(7.0, gt=0.0, le=3650.0)  # delivered records are kept this long (feedback can name them)
    # below this, records go even undelivered (normal verdicts first); default: min(1024 MB, 2 % of the volume)
    min_free_mb: Number | None = Field(None, ge=0.0, le=MAX_DISK_MB)
    prune_interval_s: Number = Field(60.0, gt=0.0, le=86400.0)  # how often delivered records and free space are checked


STORE_URL_SCHEMES = ("sqlite:///", "sqlite+pysqlite:///", "postgresql://", "postgresql+psycopg://")


class StoreSection(_Section):
    url: StrictStr | None = None  # SQLAlchemy URL; default sqlite:///<data_dir>/linewatch.sqlite3; url_file/url_env
    upgrade_at_start: StrictBool = True  # run Alembic migrations at start (an SQLite file is backed up first)
    backup_dir: Path | None = None  # default <data_dir>/backups
    retry_min_s: Number = Field(0.5, gt=0.0, le=3600.0)  # store down: first wait before the next try
    retry_max_s: Number = Field(30.0, gt=0.0, le=3600.0)  # store down: longest wait between tries
    # Retention (docs/operations.md): every frame stays counted per minute (keep_days) and per hour (keep_rollup_days).
    keep_normal_days: Number = Field(30.0, gt=0.0, le=36500.0)  # normal frames without label or evidence
    keep_days: Number = Field(365.0, gt=0.0, le=36500.0)  # every other frame: defects, evidence, labelled ones
    keep_rollup_days: Number = Field(3650.0, gt=0.0, le=36500.0)  # hourly counts of frames, parts (minutes: keep_days)
    retention_interval_s: Number = Field(300.0, gt=0.0, le=86400.0)  # how often retention looks for old rows
    retention_batch_rows: StrictInt = Field(500, ge=1, le=100_000)  # rows deleted per transaction
    retention_pause_ms: Number = Field(50.0, ge=0.0, le=10_000.0)  # between batches: the forwarder writes then

    @model_validator(mode="after")
    def _check(self) -> StoreSection:
        if self.url is not None and not self.url.startswith(STORE_URL_SCHEMES):
            raise ValueError(f"url must start with one of {', '.join(STORE_URL_SCHEMES)} (psycopg 3 drives PostgreSQL)")
        if self.retry_min_s > self.retry_max_s:
            raise ValueError("retry_min_s must not exceed retry_max_s")
        if not self.keep_normal_days <= self.keep_days <= self.keep_rollup_days:
            raise ValueError(
                f"keep_normal_days ({self.keep_normal_days:g}) <= keep_days ({self.keep_days:g}) <= keep_rollup_days "
                f"({self.keep_rollup_days:g}) must hold: the counts outlive the rows they count"
            )
        return self


class MqttSection(_Section):
    enabled: StrictBool = True  # false: no broker at all; events stay in the journal
    host: StrictStr = "localhost"  # the broker
    port: StrictInt = Field(1883, ge=1, le=65535)  # 8883 is usual with TLS
    client_id: StrictStr | None = None  # default linewatch-<site>-<line>; stable, for the persistent session
    prefix: StrictStr | None = None  # default linewatch/<site>/<line>
    username: StrictStr | None = None  # with password, password_file or password_env
    password: StrictStr | None = None  # or password_file / password_env
    tls: StrictBool = False  # TLS 1.2 at least; the broker certificate is verified
    ca_file: Path | None = None  # default: the system's CA store
    cert_file: Path | None = None  # client certificate (with key_file)
    key_file: Path | None = None  # the client certificate's key
    keepalive_s: StrictInt = Field(30, ge=5, le=65535)  # a silent broker is noticed within about 1.5 times this
    ack_timeout_s: Number = Field(10.0, gt=0.0, le=600.0)  # a forwarder chunk waits this long for PUBACKs, then retries
    max_payload_bytes: StrictInt = Field(4096, ge=64, le=1_048_576)  # larger incoming payloads are rejected
    stats_interval_s: Number = Field(60.0, ge=0.0, le=3600.0)  # P/stats counters this often (retained); 0 = off
    reconnect_min_s: Number = Field(1.0, gt=0.0, le=3600.0)  # first wait after a lost connection; doubles, jittered
    reconnect_max_s: Number = Field(5.0, gt=0.0, le=3600.0)  # bounds how long alerts wait after a broker returns
    # "5": retained commands are refused however they arrive (retain-as-published), a bounded command window;
    # "3.1.1" for a broker without MQTT 5: a command published retained while linewatch is connected is
    # then indistinguishable from a live one and is carried out (it is still refused at every resubscribe).
    protocol: Literal["5", "3.1.1"] = "5"
    # MQTT 5: how long the broker keeps our session (subscriptions, queued commands) while linewatch is away;
    # 3.1.1 sessions last until the broker expires them (Mosquitto: persistent_client_expiration).
    session_expiry_s: StrictInt = Field(14 * 86400, ge=0, le=0xFFFFFFFF)
    discovery: StrictBool = False  # Home Assistant MQTT discovery: retained entity configs per camera (docs/mqtt.md)
    discovery_prefix: StrictStr = "homeassistant"  # as set in Home Assistant; its birth message comes on <this>/status

    @model_validator(mode="after")
    def _check(self) -> MqttSection:
        for key, prefix in (("prefix", self.prefix), ("discovery_prefix", self.discovery_prefix)):
            if prefix is not None and (not prefix or any(c in prefix for c in "#+") or prefix.endswith("/")):
                raise ValueError(f"{key} must be a non-empty topic without wildcards (# +) or a trailing /")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if (self.cert_file is not None or self.ca_file is not None) and not self.tls:
            raise ValueError("ca_file, cert_file and key_file need tls = true")
        if self.password is not None and self.username is None:
            raise ValueError("password needs a username")
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError("reconnect_min_s must not exceed reconnect_max_s")
        return self


class EvidenceSection(_Section):
    dir: Path | None = None  # default <data_dir>/evidence; layout <camera>/<YYYY-MM-DD>/<inspection id>-...
    every_nth_normal: StrictInt = Field(100, ge=0)  # keep every Nth normal frame per camera; 0 = none
    jpeg_quality: StrictInt = Field(85, ge=1, le=100)  # of snapshots and heatmap overlays
    max_age_days: Number = Field(30.0, gt=0.0, le=3650.0)  # older evidence is deleted (verdict rows stay)
    min_free_mb: Number = Field(2048.0, ge=0.0, le=MAX_DISK_MB)  # below this much free disk the oldest goes first
    sweep_interval_s: Number = Field(60.0, gt=0.0, le=86400.0)  # how often age and free space are checked
    queue_size: StrictInt = Field(64, ge=1)  # frames waiting to be written; beyond it evidence is dropped (counted)
    # A normal scored within this fraction of its threshold is a close call: its evidence is kept, and the review
    # page asks an operator about it (on both sides of the threshold). 0 = only every Nth normal.
    close_call_band: Number = Field(0.1, ge=0.0, lt=1.0)
    close_call_interval_s: Number = Field(60.0, ge=0.0, le=3600.0)  # at most one close call kept per camera this often


class RetrainSection(_Section):
    """Retraining from operator-confirmed normals (linewatch/retrain/): when, from how much, under which limits."""

    enabled: StrictBool = True  # false: no schedule, and on-demand requests are refused
    schedule: Annotated[StrictStr, AfterValidator(check_cron)] = "30 3 * * *"  # crontab; "" = on demand only
    timezone: Annotated[StrictStr, AfterValidator(check_timezone)] | None = None  # IANA name; default: local
    misfire_grace_s: StrictInt = Field(3600, ge=1, le=7 * 86400)  # a missed run (machine busy or down) starts this late
    versions_dir: Path | None = None  # default <models_dir>/<line>: new versions, active.json
    min_new_normals: StrictInt = Field(8, ge=2)  # confirmed normals per product needed to train
    holdout_fraction: Number = Field(0.3, gt=0.0, lt=1.0)  # of the new normals, kept out of training for the gate
    max_shots: StrictInt = Field(16, ge=1)  # per product: shots (and memory bank) of a new version at most
    steps: StrictInt = Field(150, ge=1)  # training steps, starting from the active version's prompts
    seed: StrictInt = 0  # seeds the training and, with the run number, the holdout split
    time_limit_s: Number = Field(1800.0, gt=0.0, le=7 * 86400.0)  # the training process is killed beyond this
    cpu_threads: StrictInt = Field(1, ge=1)  # torch threads of the training process (the scorer keeps the rest)
    frr_margin: Number = Field(0.02, ge=0.0, lt=1.0)  # new false-reject rate may exceed the active one's by this
    keep_versions: StrictInt = Field(5, ge=1)  # previous versions kept for rollback
    recalibrate: StrictBool = True  # with too few new normals: move the threshold from confirmed normals instead
    min_recalibration_normals: StrictInt = Field(5, ge=1)  # confirmed normals per product a recalibration needs
    max_threshold_step: Number = Field(0.1, gt=0.0, le=1.0)  # relative: one recalibration moves it at most this much


class HttpSection(_Section):
    host: StrictStr = "127.0.0.1"  # metrics, health and feedback; loopback by default
    port: StrictInt = Field(9108, ge=0, le=65535)  # 0 = any free port (tests)
    token: StrictStr | None = None  # required beyond loopback; or token_file / token_env
    # a second bearer token that may only GET /metrics and /healthz (a Prometheus scraper cannot retrain or
    # roll back with it); needs token; or scrape_token_file / scrape_token_env
    scrape_token: StrictStr | None = None
    cert_file: Path | None = None  # TLS on this port (HTTPS) with this certificate chain (PEM), with key_file
    key_file: Path | None = None  # the certificate's private key (PEM); login cookies are then Secure

    @model_validator(mode="after")
    def _token_beyond_loopback(self) -> HttpSection:
        if self.token is None and not is_loopback(self.host):
            raise ValueError(f"host {self.host!r} is reachable beyond this machine: set token (or token_file)")
        for name in ("token", "scrape_token"):
            token = getattr(self, name)
            if token is not None and (len(token) < 16 or not token.isprintable() or any(c.isspace() for c in token)):
                raise ValueError(f"{name} must be at least 16 characters, printable, without spaces")
        if self.scrape_token is not None and (self.token is None or self.scrape_token == self.token):
            raise ValueError("scrape_token needs token set, and must differ from it")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self

    @property
    def tls_files(self) -> tuple[Path, Path] | None:
        """(cert_file, key_file) when the port serves HTTPS."""
        return None if self.cert_file is None or self.key_file is None else (self.cert_file, self.key_file)


class WebSection(_Section):
    """The operator's page on the HTTP port (linewatch/web/): live view, review queue, history, models."""

    enabled: StrictBool = True  # false: the JSON routes and /metrics only
    refresh_s: Number = Field(2.0, ge=0.5, le=60.0)  # how often the live view and line status refresh
    review_hours: Number = Field(24.0, gt=0.0, le=3650 * 24.0)  # the review queue shows this many hours
    session_hours: Number = Field(12.0, gt=0.0, le=30 * 24.0)  # a login (with [http] token set) lasts this long
    idle_minutes: Number = Field(30.0, gt=0.0, le=30 * 24 * 60.0)  # ... or ends this long after its last request
    timezone: Annotated[StrictStr, AfterValidator(check_timezone)] | None = None  # times shown; default: local
    # "Save as normal sample" on the live view writes the frame here, named as `linewatch collect` names its
    # files, for `linewatch train --normals`; default: <data_dir>/samples
    samples_dir: Path | None = None
    # the page's address as MQTT consumers reach it (e.g. "https://press3.plant:9108/"): alerts and verdict tiles
    # then carry snapshot_url and heatmap_url, absolute links to their evidence (null without it)
    public_url: Annotated[StrictStr, AfterValidator(check_public_url)] | None = None


class OpcUaSection(_Section):
    """The OPC UA server (linewatch/plant/opcua.py, docs/opcua.md): per station the last part, counters, state."""

    enabled: StrictBool = False  # true: serve OPC UA (Basic256Sha256 SignAndEncrypt, the page's accounts)
    # loopback, like [http]: exposing the line to the plant network is a decision; set its address or 0.0.0.0
    host: StrictStr = "127.0.0.1"
    port: StrictInt = Field(4840, ge=1, le=65535)  # 4840 is OPC UA's registered port
    allow_anonymous: StrictBool = False  # sessions without an account may read (never call methods)
    # also an endpoint without security (policy None): anonymous reading only, passwords refused there
    allow_unsecured: StrictBool = False
    cert_dir: Path | None = None  # default <data_dir>/opcua: the server certificate, generated at the first start
    # client certificates (DER or PEM) allowed to connect, no others; default <cert_dir>/trusted
    trusted_clients_dir: Path | None = None

    @model_validator(mode="after")
    def _unsecured_is_anonymous(self) -> OpcUaSection:
        if self.allow_unsecured and not self.allow_anonymous:
            raise ValueError("allow_unsecured needs allow_anonymous = true (only anonymous reading goes unsecured)")
        return self


class CameraSection(_Section):
    name: StrictStr = Field(pattern=_NAME)  # in MQTT topics, metrics and file names
    source: Literal["synthetic", "device", "url", "file", "folder"]  # where frames come from (see the next keys)
    product: StrictStr  # which of the model's products this camera sees
    enabled: StrictBool = True  # false: not read at all (MQTT enabled/set switches it live)
    device: StrictInt | None = Field(None, ge=0)  # source = "device": OpenCV index
    url: StrictStr | None = None  # source = "url": rtsp:// or http(s)://
    path: Path | None = None  # source = "file" (video) or "folder" (images)
    loop: StrictBool = True  # source = "file": start again at the end, else stop the camera
    fps: Number | None = Field(None, gt=0.0, le=1000.0)  # at most this many frames/s; none = as fast as it comes
    policy: Literal["latest", "queue"] = "latest"  # score only the newest frame, or every frame (bounded queue)
    queue_size: StrictInt = Field(8, ge=1, le=10_000)  # policy = "queue": frames waiting; beyond it the oldest goes
    roi: tuple[StrictInt, StrictInt, StrictInt, StrictInt] | None = None  # x, y, width, height in pixels
    rotate: Literal[0, 90, 180, 270] = 0  # degrees clockwise, after the roi crop
    stalled_after_s: Number = Field(5.0, gt=0.0, le=86400.0)  # no frame for this long: the camera is "stalled"
    open_timeout_s: Number = Field(10.0, gt=0.0, le=3600.0)  # device and url: opening gives up after this
    read_timeout_s: Number = Field(5.0, gt=0.0, le=3600.0)  # device and url: a read gives up after this
    reconnect_min_s: Number = Field(0.5, gt=0.0, le=3600.0)  # first wait before reopening a lost source
    reconnect_max_s: Number = Field(30.0, gt=0.0, le=3600.0)  # longest wait between reopen attempts
    defect_rate: Number = Field(0.1, ge=0.0, le=1.0)  # source = "synthetic"
    width: StrictInt = Field(640, ge=32, le=MAX_SYNTHETIC_SIDE)  # source = "synthetic"
    height: StrictInt = Field(480, ge=32, le=MAX_SYNTHETIC_SIDE)  # source = "synthetic"
    seed: StrictInt = 0  # source = "synthetic"
    # "triggered": only the frame after each trigger (MQTT <camera>/trigger, its station's) is scored, with the part id
    trigger: Literal["free", "triggered"] = "free"
    # source = "folder": each file is a part, its id the regex group "part" (or the whole match) of the file name
    part_id_pattern: StrictStr | None = None

    @model_validator(mode="after")
    def _source_has_its_target(self) -> CameraSection:
        needed = {"device": "device", "url": "url", "file": "path", "folder": "path"}.get(self.source)
        if needed is not None and getattr(self, needed) is None:
            raise ValueError(f"source = {self.source!r} needs the key {needed!r}")
        if self.url is not None and not self.url.startswith(("rtsp://", "rtsps://", "http://", "https://")):
            raise ValueError("url must start with rtsp://, rtsps://, http:// or https://")
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError("reconnect_min_s must not exceed reconnect_max_s")
        if self.part_id_pattern is not None:
            if self.source != "folder" or self.trigger == "triggered":
                raise ValueError('part_id_pattern is for source = "folder" (each file is a part), not with a trigger')
            try:
                re.compile(self.part_id_pattern)
            except re.error as problem:
                raise ValueError(f"part_id_pattern is not a regular expression: {problem}") from None
        return self

    @property
    def parts(self) -> bool:
        """Whether the camera's frames carry part ids (triggered, or a folder naming them)."""
        return self.trigger == "triggered" or self.part_id_pattern is not None


class StationSection(_Section):
    """Cameras that see the same part: one verdict per part, the worst of theirs (linewatch/plant/stations.py)."""

    name: StrictStr = Field(pattern=_NAME)  # in MQTT topics (<station>/trigger, <station>/part) and OPC UA
    cameras: list[StrictStr] = Field(min_length=1)  # each triggered (or a folder naming parts), in one station only
    # a part whose cameras have not all reported this long after its trigger is judged "incomplete"
    deadline_ms: StrictInt = Field(2000, ge=10, le=600_000)


class Config(_Section):
    site: SiteSection = SiteSection()
    model: ModelSection = ModelSection()
    scoring: ScoringSection = ScoringSection()
    events: EventsSection = EventsSection()
    journal: JournalSection = JournalSection()
    store: StoreSection = StoreSection()
    mqtt: MqttSection = MqttSection()
    evidence: EvidenceSection = EvidenceSection()
    http: HttpSection = HttpSection()
    web: WebSection = WebSection()
    retrain: RetrainSection = RetrainSection()
    cameras: list[CameraSection] = []
    stations: list[StationSection] = []
    opcua: OpcUaSection = OpcUaSection()
    triton: TritonSection = TritonSection()
    demo: DemoSection = DemoSection()

    @model_validator(mode="after")
    def _precision_fits_runtime(self) -> Config:
        local = self.triton.local_runtime if self.scoring.runtime == "triton" else self.scoring.runtime
        allowed = LOCAL_PRECISIONS[local]
        if self.scoring.precision not in allowed:
            name = f"[triton] local_runtime {local!r}" if self.scoring.runtime == "triton" else f"runtime {local!r}"
            raise ValueError(f"{name} scores in {', '.join(allowed)}, not {self.scoring.precision!r}")
        return self

    @model_validator(mode="after")
    def _review_within_the_journal(self) -> Config:
        # A label is checked against the journal, which keeps records keep_days: the queue must not offer
        # items that can no longer be labelled.
        # A label names its inspection by id for journal.keep_days: the row must still be there to take it.
        if self.store.keep_normal_days < self.journal.keep_days:
            raise ValueError(
                f"store.keep_normal_days ({self.store.keep_normal_days:g}) must not be below journal.keep_days "
                f"({self.journal.keep_days:g}): a label for a frame could arrive after its row is gone"
            )
        if self.web.review_hours > self.journal.keep_days * 24:
            raise ValueError(
                f"web.review_hours ({self.web.review_hours:g}) must not exceed journal.keep_days "
                f"({self.journal.keep_days:g} days): older items can no longer be labelled"
            )
        return self

    @model_validator(mode="after")
    def _openvino_on_the_cpu(self) -> Config:
        local = self.triton.local_runtime if self.scoring.runtime == "triton" else self.scoring.runtime
        if local == "openvino" and not self.model.device.startswith("cpu"):
            raise ValueError(
                f'scoring.runtime "openvino" scores on the CPU, but model.device is {self.model.device!r}; '
                'on a GPU use runtime "torch"'
            )
        return self

    @model_validator(mode="after")
    def _evidence_goes_before_journal_records(self) -> Config:
        journal, evidence = self.journal.min_free_mb, self.evidence.min_free_mb
        if journal is not None and journal > evidence:
            raise ValueError(
                f"journal.min_free_mb ({journal:g}) must not exceed evidence.min_free_mb ({evidence:g}): evidence "
                "images must go before undelivered journal records"
            )
        return self

    @model_validator(mode="after")
    def _unique_camera_names(self) -> Config:
        names = [camera.name for camera in self.cameras]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"camera names must be unique; repeated: {duplicates}")
        return self

    @model_validator(mode="after")
    def _stations_of_known_triggered_cameras(self) -> Config:
        cameras = {camera.name: camera for camera in self.cameras}
        seen: dict[str, str] = {}
        for station in self.stations:
            if station.name in cameras or station.name in seen.values():
                raise ValueError(f"station {station.name!r}: the name is taken by a camera or another station")
            for name in station.cameras:
                if name not in cameras:
                    raise ValueError(f"station {station.name!r}: no camera {name!r}")
                if not cameras[name].parts:
                    raise ValueError(f'station {station.name!r}: camera {name!r} needs trigger = "triggered" '
                                     "(or, for a folder, part_id_pattern)")  # fmt: skip
                if name in seen:
                    raise ValueError(f"camera {name!r} is in both stations {seen[name]!r} and {station.name!r}")
                seen[name] = station.name
        return self

    @property
    def journal_path(self) -> Path:
        return self.journal.path or self.site.data_dir / "journal.sqlite3"

    @property
    def store_url(self) -> str:
        return self.store.url or f"sqlite:///{self.site.data_dir / 'linewatch.sqlite3'}"

    @property
    def backup_dir(self) -> Path:
        return self.store.backup_dir or self.site.data_dir / "backups"

    @property
    def evidence_dir(self) -> Path:
        return self.evidence.dir or self.site.data_dir / "evidence"

    @property
    def samples_dir(self) -> Path:
        return self.web.samples_dir or self.site.data_dir / "samples"

    @property
    def versions_dir(self) -> Path:
        return self.retrain.versions_dir or self.model.models_dir / self.site.line

    @property
    def mqtt_prefix(self) -> str:
        return self.mqtt.prefix or f"linewatch/{self.site.site}/{self.site.line}"

    @property
    def mqtt_client_id(self) -> str:
        return self.mqtt.client_id or f"linewatch-{self.site.site}-{self.site.line}"


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from error
    try:
        data = resolve_secrets(data, "", os.environ if environ is None else environ)
    except SecretError as error:
        raise ConfigError(f"{path}: {error}") from None
    try:
        return Config.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}" for item in error.errors())
        raise ConfigError(f"{path}: {problems}") from error
