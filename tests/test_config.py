"""Configuration: the shipped file loads; unknown keys, wrong types and bad values are named by key path."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from linewatch.cli.main import main
from linewatch.config import Config, ConfigError, DemoSection, ModelSection, load_config
from linewatch.cron import cron_trigger

SHIPPED = Path(__file__).resolve().parents[1] / "config.toml"


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "linewatch.toml"
    path.write_text(text)
    return path


def _error(tmp_path: Path, text: str) -> str:
    path = _config(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message
    return message


def test_shipped_config_loads_with_the_values_written_in_it() -> None:
    config = load_config(SHIPPED)
    raw = tomllib.loads(SHIPPED.read_text())
    assert set(raw) == {
        *("site", "model", "scoring", "events", "journal", "store", "mqtt", "evidence", "http", "web", "retrain"),
        *("cameras", "demo"),
    }
    sections = [(name, getattr(config, name), values) for name, values in raw.items() if name != "cameras"]
    sections += [(f"cameras[{i}]", config.cameras[i], values) for i, values in enumerate(raw["cameras"])]
    for section, loaded, values in sections:
        for key, value in values.items():
            got = getattr(loaded, key)
            assert (str(got) if isinstance(got, Path) else got) == value, f"{section}.{key}"
    assert [camera.source for camera in config.cameras] == ["synthetic"]
    assert config.model.backbone == "linewatch-tiny" and config.model.pretrained == "none"
    assert isinstance(config.model.path, Path) and isinstance(config.demo.data_dir, Path)


def test_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, ""))
    assert config == Config()
    assert config.model == ModelSection() and config.demo == DemoSection()
    assert config.scoring.runtime == "torch" and config.scoring.precision == "fp32" and config.model.weights is None


def test_unknown_top_level_key_is_named(tmp_path: Path) -> None:
    message = _error(tmp_path, 'colour = "blue"\n')
    assert "colour: Extra inputs are not permitted" in message


def test_unknown_section_is_named(tmp_path: Path) -> None:
    message = _error(tmp_path, "[daemon]\nport = 8080\n")
    assert "daemon: Extra inputs are not permitted" in message


def test_unknown_key_inside_model_is_named_with_its_path(tmp_path: Path) -> None:
    message = _error(tmp_path, '[model]\nbackbone_name = "ViT-B-16"\n')
    assert "model.backbone_name: Extra inputs are not permitted" in message


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ('[demo]\nsteps = "many"\n', "demo.steps"),
        ("[model]\ndevice = 5\n", "model.device"),
        ('[model]\ntarget_frr = "low"\n', "model.target_frr"),
        ("[model]\npath = 3\n", "model.path"),
        ("model = 3\n", "model"),
    ],
)
def test_wrong_type_names_the_key(tmp_path: Path, text: str, path: str) -> None:
    message = _error(tmp_path, text)
    assert f"{path}: Input " in message


def test_precision_must_be_one_of_the_allowed(tmp_path: Path) -> None:
    message = _error(tmp_path, '[scoring]\nprecision = "fp64"\n')
    assert "scoring.precision" in message
    assert all(allowed in message for allowed in ("'fp32'", "'bf16'", "'fp16'", "'int8'"))


def test_precision_under_model_says_where_it_moved(tmp_path: Path) -> None:
    message = _error(tmp_path, '[model]\nprecision = "fp32"\n')
    assert "precision moved to [scoring] precision" in message


@pytest.mark.parametrize(
    ("runtime", "precision", "accepted"),
    [
        ("torch", "fp32", True),
        ("torch", "bf16", True),
        ("torch", "int8", False),
        ("openvino", "fp32", True),
        ("openvino", "bf16", True),
        ("openvino", "int8", True),
        ("openvino", "fp16", False),
    ],
)
def test_precision_must_fit_the_runtime(tmp_path: Path, runtime: str, precision: str, accepted: bool) -> None:
    text = f'[scoring]\nruntime = "{runtime}"\nprecision = "{precision}"\n'
    if accepted:
        scoring = load_config(_config(tmp_path, text)).scoring
        assert (scoring.runtime, scoring.precision) == (runtime, precision)
    else:
        assert f"runtime '{runtime}' scores in" in _error(tmp_path, text)


def test_triton_runtime_reads_its_section_and_checks_the_local_fallback(tmp_path: Path) -> None:
    text = '[scoring]\nruntime = "triton"\n[triton]\nurl = "gpu-1:8001"\nfallback = "none"\ndeadline_ms = 500\n'
    config = load_config(_config(tmp_path, text))
    assert (config.scoring.runtime, config.triton.url, config.triton.fallback) == ("triton", "gpu-1:8001", "none")
    assert config.triton.deadline_ms == 500 and config.triton.local_runtime == "torch"
    refused = '[scoring]\nruntime = "triton"\nprecision = "int8"\n'
    assert "[triton] local_runtime 'torch' scores in" in _error(tmp_path, refused)
    openvino = load_config(_config(tmp_path, refused + '[triton]\nlocal_runtime = "openvino"\n'))
    assert openvino.scoring.precision == "int8"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('cert_file = "c.pem"\nca_file = "ca.pem"\n', "cert_file and key_file go together"),
        ('cert_file = "c.pem"\nkey_file = "k.pem"\n', "cert_file needs ca_file"),
        ("hold_s = 40\n", "triton.hold_s"),
        ('model = "a b"\n', "triton.model"),
        ("deadline_ms = 10000\nhold_s = 15\n", "2 x deadline_ms + hold_s is 35 s: a batch could wait longer"),
        ("load_timeout_s = 1e300\n", "triton.load_timeout_s: Input should be less than or equal to 3600"),
        ("load_timeout_s = nan\n", "triton.load_timeout_s: Input should be a finite number"),
    ],
)
def test_triton_section_refuses_what_cannot_work(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in _error(tmp_path, f"[triton]\n{text}")


def test_openvino_on_a_gpu_device_is_refused(tmp_path: Path) -> None:
    message = _error(tmp_path, '[model]\ndevice = "cuda"\n[scoring]\nruntime = "openvino"\n')
    assert "scores on the CPU" in message and "'cuda'" in message


@pytest.mark.parametrize("value", ["1.0", "1.5", "-0.1"])
def test_target_frr_out_of_range_is_refused(tmp_path: Path, value: str) -> None:
    message = _error(tmp_path, f"[model]\ntarget_frr = {value}\n")
    assert "model.target_frr" in message


@pytest.mark.parametrize("value", [0.0, 0.5, 0.999])
def test_target_frr_in_range_is_accepted(tmp_path: Path, value: float) -> None:
    assert load_config(_config(tmp_path, f"[model]\ntarget_frr = {value}\n")).model.target_frr == value


@pytest.mark.parametrize("key", ["train_normals", "shots", "steps", "test_normals", "test_defects_per_kind"])
def test_demo_counts_must_be_positive(tmp_path: Path, key: str) -> None:
    message = _error(tmp_path, f"[demo]\n{key} = 0\n")
    assert f"demo.{key}: Input should be greater than or equal to 1" in message


def test_every_bad_key_is_listed(tmp_path: Path) -> None:
    message = _error(tmp_path, "[model]\nfoo = 1\ndevice = 5\n[demo]\nshots = 0\n")
    assert "model.foo" in message and "model.device" in message and "demo.shots" in message


@pytest.mark.parametrize("text", ["[demo]\nsteps = true\n", '[demo]\nshots = "3"\n'])
def test_values_of_the_wrong_toml_type_are_not_coerced(tmp_path: Path, text: str) -> None:
    _error(tmp_path, text)


def test_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match="config file not found") as caught:
        load_config(missing)
    assert str(missing) in str(caught.value)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path)  # a directory is not a config file


def test_invalid_toml_is_named(tmp_path: Path) -> None:
    message = _error(tmp_path, "[model\nbackbone = \n")
    assert "not valid TOML" in message and "line 1" in message


def test_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('[demo]\nproduct = "Zahnrad für Getriebe"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, ""))
    with pytest.raises(ValidationError):
        config.model.device = "cuda"  # type: ignore[misc]


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_demo_with_a_bad_config_exits_2_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _config(tmp_path, "[model]\nturbo = true\n")
    assert main(["demo", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("linewatch: error: ") and "model.turbo" in err and str(path) in err
    assert main(["demo", "--config", str(tmp_path / "none.toml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["linewatch.toml"]  # nothing generated or trained


CAMERA = '[[cameras]]\nname = "cam1"\nproduct = "p"\n'


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        (CAMERA + 'source = "device"\n', ["cameras.0", "needs the key 'device'"]),
        (CAMERA + 'source = "url"\n', ["cameras.0", "needs the key 'url'"]),
        (CAMERA + 'source = "url"\nurl = "ftp://x"\n', ["url must start with rtsp://"]),
        (CAMERA + 'source = "folder"\n', ["needs the key 'path'"]),
        (CAMERA + 'source = "webcam"\n', ["cameras.0.source", "'synthetic'", "'folder'"]),
        (CAMERA + 'source = "synthetic"\nrotate = 45\n', ["cameras.0.rotate"]),
        (CAMERA + 'source = "synthetic"\nroi = [0, 0, 10]\n', ["cameras.0.roi"]),
        (CAMERA + 'source = "synthetic"\nfps = 0\n', ["cameras.0.fps", "greater than 0"]),
        (CAMERA + 'source = "synthetic"\nshutter = 3\n', ["cameras.0.shutter", "Extra inputs"]),
        ('[[cameras]]\nname = "cam 1"\nsource = "synthetic"\nproduct = "p"\n', ["cameras.0.name", "pattern"]),
        (CAMERA + 'source = "synthetic"\n' + CAMERA + 'source = "synthetic"\n', ["repeated: ['cam1']"]),
        ("[events]\ndebounce_n = 4\ndebounce_m = 3\n", ["events", "debounce_n (4) must not exceed debounce_m (3)"]),
        ("[scoring]\nbatch_max_size = 0\n", ["scoring.batch_max_size"]),
        ('[site]\nline = "line/3"\n', ["site.line", "pattern"]),
        ('[store]\nurl = "mysql://x"\n', ["store", "must start with one of sqlite:///"]),
        ('[store]\nurl = "postgresql+asyncpg://h/db"\n', ["store", "postgresql+psycopg://"]),
        ("[store]\nretry_min_s = 5\nretry_max_s = 1\n", ["store", "retry_min_s must not exceed"]),
        ("[mqtt]\nport = 70000\n", ["mqtt.port", "less than or equal to 65535"]),
        ('[mqtt]\nprefix = "plant/#"\n', ["mqtt", "wildcards"]),
        ('[mqtt]\ncert_file = "c.pem"\ntls = true\n', ["mqtt", "cert_file and key_file go together"]),
        ('[mqtt]\nca_file = "ca.pem"\n', ["mqtt", "need tls = true"]),
        ('[mqtt]\npassword = "pw"\n', ["mqtt", "password needs a username"]),
        ("[mqtt]\ntls = 1\n", ["mqtt.tls", "boolean"]),
        ("[evidence]\nevery_nth_normal = -1\n", ["evidence.every_nth_normal"]),
        ("[evidence]\njpeg_quality = 101\n", ["evidence.jpeg_quality"]),
        ('[http]\nhost = "0.0.0.0"\n', ["http", "reachable beyond this machine", "token"]),
        ('[http]\ntoken = "short"\n', ["http", "at least 16 characters"]),
        ('[http]\nhost = "::1"\nport = 99999\n', ["http.port"]),
        ('[http]\nscrape_token = "scrape-0123456789abcd"\n', ["http", "scrape_token needs token"]),
        ('[http]\ntoken = "same-0123456789abcdef"\nscrape_token = "same-0123456789abcdef"\n', ["must differ"]),
        ('[http]\ntoken = "line-0123456789abcdef"\nscrape_token = "short"\n', ["scrape_token must be at least"]),
        ('[http]\ncert_file = "server.crt"\n', ["http", "cert_file and key_file go together"]),
        ('[web]\npublic_url = "ftp://press3/"\n', ["web.public_url", "http(s) address"]),
        ('[web]\npublic_url = "https://press3/?x=1"\n', ["web.public_url", "without query"]),
    ],
)
def test_daemon_sections_name_the_bad_key(tmp_path: Path, text: str, fragments: list[str]) -> None:
    message = _error(tmp_path, text)
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_example_plant_config_is_valid(tmp_path: Path) -> None:
    example = (SHIPPED.parent / "deploy" / "linewatch.example.toml").read_text()
    secrets = {
        "press3-top.url": "rtsp://inspect:pw@10.20.3.11:554/stream1",
        "store.url": "postgresql+psycopg://linewatch:pw@db.plant/linewatch",
        "mqtt.password": "mqtt-pw",
        "http.token": "0123456789abcdef0123",
        "http.scrape-token": "scrape-0123456789abcdef",
    }
    for name, value in secrets.items():
        (tmp_path / name).write_text(value + "\n")
    path = tmp_path / "example.toml"
    path.write_text(example.replace("/run/credentials/linewatch.service", str(tmp_path)))
    config = load_config(path)
    assert config.store_url == secrets["store.url"] and config.mqtt.password == "mqtt-pw"
    assert config.http.token == "0123456789abcdef0123" and config.mqtt.tls
    assert config.http.scrape_token == "scrape-0123456789abcdef" and config.http.tls_files is not None
    assert config.cameras[0].url == "rtsp://inspect:pw@10.20.3.11:554/stream1"
    assert [c.source for c in config.cameras] == ["url", "url", "device"]
    assert config.cameras[0].roi == (320, 0, 1280, 1080) and config.cameras[1].rotate == 90
    assert config.journal_path == Path("/var/lib/linewatch/journal.sqlite3")


def test_check_config_exits_78_on_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from linewatch.cli.main import main

    bad = _config(tmp_path, "[scoring]\nbatch_max_size = 0\n")
    assert main(["check-config", "--config", str(bad)]) == 78
    assert "scoring.batch_max_size" in capsys.readouterr().err
    assert main(["check-config", "--config", str(SHIPPED)]) == 0


def test_camera_url_can_come_from_a_file_or_the_environment(tmp_path: Path) -> None:
    secret = tmp_path / "cam1.url"
    secret.write_text("rtsp://user:s3cret@10.0.0.5/stream\n")
    from_file = _config(tmp_path, CAMERA + f'source = "url"\nurl_file = "{secret}"\n')
    assert load_config(from_file).cameras[0].url == "rtsp://user:s3cret@10.0.0.5/stream"
    from_env = _config(tmp_path, CAMERA + 'source = "url"\nurl_env = "CAM1_URL"\n')
    assert load_config(from_env, {"CAM1_URL": "rtsp://h/s"}).cameras[0].url == "rtsp://h/s"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (CAMERA + 'source = "url"\nurl_env = "NOT_SET_ANYWHERE"\n', "cameras.0.url_env: environment variable NOT_SET"),
        (
            CAMERA + 'source = "url"\nurl_file = "/nonexistent/url"\n',
            "cameras.0.url_file: cannot read /nonexistent/url",
        ),
        (CAMERA + 'source = "url"\nurl = "rtsp://a"\nurl_env = "X"\n', "give only one of url, url_file, url_env"),
        (CAMERA + 'source = "url"\nurl_env = 3\n', "cameras.0.url_env: expected a string"),
        (CAMERA + 'source = "synthetic"\nproduct_env = "P"\n', "cameras.0.product_env"),  # not a secret key
    ],
)
def test_secret_sources_name_the_key_but_never_the_secret(tmp_path: Path, text: str, fragment: str) -> None:
    message = _error(tmp_path, text)
    assert fragment in message


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ('[retrain]\nschedule = "0 25 * * *"\n', ["retrain.schedule: not a crontab expression", "(25)", "(23)"]),
        ('[retrain]\nschedule = "@daily"\n', ["retrain.schedule: not a crontab expression", "got 1, expected 5"]),
        ("[retrain]\nschedule = 5\n", ["retrain.schedule", "valid string"]),
        ('[retrain]\ntimezone = "Mars/Olympus"\n', ["retrain.timezone: unknown time zone 'Mars/Olympus'", "IANA"]),
        ('[retrain]\ntimezone = "../../etc/passwd"\n', ["retrain.timezone: unknown time zone"]),
        ("[retrain]\nholdout_fraction = 0\n", ["retrain.holdout_fraction: Input should be greater than 0"]),
        ("[retrain]\nholdout_fraction = 1\n", ["retrain.holdout_fraction: Input should be less than 1"]),
        ("[retrain]\nmin_new_normals = 1\n", ["retrain.min_new_normals: Input should be greater than or equal to 2"]),
        ("[retrain]\nmax_threshold_step = 0\n", ["retrain.max_threshold_step: Input should be greater than 0"]),
        ("[retrain]\nmax_threshold_step = 1.5\n", ["retrain.max_threshold_step: Input should be less than or equal"]),
        ("[retrain]\nkeep_versions = 0\n", ["retrain.keep_versions"]),
        ("[retrain]\ncpu_threads = 0\n", ["retrain.cpu_threads"]),
        ("[retrain]\nsteps = true\n", ["retrain.steps: Input should be a valid integer"]),
        ("[retrain]\nenabled = 1\n", ["retrain.enabled", "boolean"]),
        ("[retrain]\nnightly = true\n", ["retrain.nightly: Extra inputs are not permitted"]),
    ],
)
def test_retrain_section_names_the_bad_key(tmp_path: Path, text: str, fragments: list[str]) -> None:
    message = _error(tmp_path, text)
    for fragment in fragments:
        assert fragment in message, (fragment, message)


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ("", "schedule", "30 3 * * *"),
        ('[retrain]\nschedule = ""\n', "schedule", ""),
        ('[retrain]\nschedule = "0 2 * * mon-fri"\n', "schedule", "0 2 * * mon-fri"),
        ('[retrain]\nschedule = "*/15 6-18 * * *"\n', "schedule", "*/15 6-18 * * *"),
        ('[retrain]\ntimezone = "Europe/Berlin"\n', "timezone", "Europe/Berlin"),
        ('[retrain]\ntimezone = "UTC"\n', "timezone", "UTC"),
        ("", "timezone", None),
        ("[retrain]\nholdout_fraction = 0.5\n", "holdout_fraction", 0.5),
        ("[retrain]\nmin_new_normals = 2\n", "min_new_normals", 2),
        ("[retrain]\nmax_threshold_step = 1\n", "max_threshold_step", 1.0),
        ("[retrain]\nenabled = false\n", "enabled", False),
    ],
)
def test_retrain_section_accepts_valid_values(tmp_path: Path, text: str, key: str, value: object) -> None:
    assert getattr(load_config(_config(tmp_path, text)).retrain, key) == value


def test_versions_dir_defaults_to_the_lines_folder_under_models_dir_and_can_be_set(tmp_path: Path) -> None:
    assert Config().versions_dir == Path("models/line1")
    moved = load_config(_config(tmp_path, '[site]\nline = "press3"\n[model]\nmodels_dir = "/srv/models"\n'))
    assert moved.versions_dir == Path("/srv/models/press3")
    text = '[site]\nline = "press3"\n[retrain]\nversions_dir = "/mnt/shared/press3-versions"\n'
    assert load_config(_config(tmp_path, text)).versions_dir == Path("/mnt/shared/press3-versions")


@pytest.mark.parametrize(
    ("weekday", "days"),
    [
        ("*", "Sun Mon Tue Wed Thu Fri Sat"),
        ("1-5", "Mon Tue Wed Thu Fri"),  # APScheduler's own from_crontab would run this Tuesday to Saturday
        ("0", "Sun"),
        ("7", "Sun"),
        ("6,0", "Sun Sat"),
        ("sat,sun", "Sun Sat"),
        ("mon-fri/2", "Mon Wed Fri"),
        ("*/3", "Sun Wed Sat"),
        ("1/2", "Mon Wed Fri"),
    ],
)
def test_cron_weekdays_read_as_crontab_reads_them(weekday: str, days: str) -> None:
    trigger = cron_trigger(f"0 3 * * {weekday}", "UTC")
    start = datetime(2026, 11, 28, 12, tzinfo=UTC)  # a Saturday
    fires, when = set(), start
    for _ in range(7):
        when = trigger.get_next_fire_time(None, when + timedelta(seconds=1))
        fires.add(when.strftime("%a"))
    order = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
    assert " ".join(sorted(fires, key=order.index)) == days


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [("0 3 * * 8", "0-7 or sun..sat"), ("0 3 * * 5-1", "runs backwards"), ("0 3 * *", "got 4, expected 5")],
)
def test_cron_weekday_errors_name_the_problem(expression: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        cron_trigger(expression, "UTC")


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("[web]\nrefresh_s = 0.1\n", ["web.refresh_s: Input should be greater than or equal to 0.5"]),
        ("[web]\nrefresh_s = 120\n", ["web.refresh_s: Input should be less than or equal to 60"]),
        ("[web]\nreview_hours = 0\n", ["web.review_hours: Input should be greater than 0"]),
        ("[web]\nsession_hours = -1\n", ["web.session_hours: Input should be greater than 0"]),
        ('[web]\ntimezone = "Moon/Base"\n', ["web.timezone: unknown time zone 'Moon/Base'"]),
        ('[web]\nenabled = "yes"\n', ["web.enabled", "boolean"]),
        ("[web]\nport = 80\n", ["web.port: Extra inputs are not permitted"]),
        ("[evidence]\nclose_call_band = 1\n", ["evidence.close_call_band: Input should be less than 1"]),
        (
            "[journal]\nkeep_days = 1\n[web]\nreview_hours = 48\n",
            ["web.review_hours (48) must not exceed journal.keep_days (1 days)"],
        ),
        ("[evidence]\nclose_call_band = -0.1\n", ["evidence.close_call_band: Input should be greater than or equal"]),
    ],
)
def test_web_settings_name_the_bad_key(tmp_path: Path, text: str, fragments: list[str]) -> None:
    message = _error(tmp_path, text)
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_web_defaults_and_values(tmp_path: Path) -> None:
    defaults = load_config(_config(tmp_path, ""))
    assert defaults.web.enabled and defaults.web.refresh_s == 2.0 and defaults.web.timezone is None
    assert defaults.evidence.close_call_band == 0.1
    config = load_config(_config(tmp_path, '[web]\nenabled = false\ntimezone = "Asia/Tokyo"\nreview_hours = 8\n'))
    assert not config.web.enabled and config.web.timezone == "Asia/Tokyo" and config.web.review_hours == 8.0


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("[journal]\nkeep_days = inf\n", ["journal.keep_days", "finite number, not inf"]),
        ("[journal]\nkeep_days = 1e10\n", ["journal.keep_days", "less than or equal to 3650"]),
        ("[journal]\nmin_free_mb = nan\n", ["journal.min_free_mb", "finite number, not nan"]),
        ("[web]\nsession_hours = inf\n", ["web.session_hours", "finite number"]),
        ("[web]\nsession_hours = 1e6\n", ["web.session_hours", "less than or equal to 720"]),
        ("[evidence]\nmax_age_days = inf\n", ["evidence.max_age_days", "finite number"]),
        ("[evidence]\nmax_age_days = 1e9\n", ["evidence.max_age_days", "less than or equal to 3650"]),
        ("[model]\nthresholds = { p = nan }\n", ["model.thresholds.p", "finite number"]),
        ("[retrain]\ntime_limit_s = inf\n", ["retrain.time_limit_s", "finite number"]),
        (CAMERA + 'source = "synthetic"\nwidth = 1000000\n', ["cameras.0.width", "less than or equal to 8192"]),
        (CAMERA + 'source = "synthetic"\nfps = inf\n', ["cameras.0.fps", "finite number"]),
        (CAMERA + 'source = "synthetic"\nstalled_after_s = 1e300\n', ["cameras.0.stalled_after_s"]),
        ('[retrain]\nschedule = "0 3 31 2 *"\n', ["retrain.schedule", "never fires"]),
        ('[retrain]\nschedule = "0 3 31 4 *"\n', ["retrain.schedule", "never fires"]),
        ('[http]\ntoken = "                    "\n', ["http", "without spaces"]),
        ('[http]\ntoken = "0123456789 abcdef0123"\n', ["http", "without spaces"]),
    ],
)
def test_values_that_would_fail_at_run_time_are_refused_by_check_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, fragments: list[str]
) -> None:
    """Issue 15, item 7: infinities, overflowing durations, huge frames, a schedule that never fires and a
    token of spaces passed check-config and then failed (or never acted) at run time."""
    path = _config(tmp_path, text)
    assert main(["check-config", "--config", str(path)]) == 78
    message = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_a_secret_file_that_is_not_utf8_is_a_config_error_naming_key_and_file(tmp_path: Path) -> None:
    secret = tmp_path / "store.url"
    secret.write_bytes(b"postgresql://\xff\xfe")
    with pytest.raises(ConfigError, match=f"store.url_file: {secret} is not UTF-8 text"):
        load_config(_config(tmp_path, f'[store]\nurl_file = "{secret}"\n'))


def test_the_journal_watermark_may_not_exceed_the_evidence_watermark(tmp_path: Path) -> None:
    """Issue 15, item 3: evidence images must go before undelivered journal records."""
    message = _error(tmp_path, "[journal]\nmin_free_mb = 4096\n\n[evidence]\nmin_free_mb = 2048\n")
    assert "journal.min_free_mb (4096) must not exceed evidence.min_free_mb (2048)" in message
    assert load_config(_config(tmp_path, "")).journal.min_free_mb is None  # the default fits the volume


def test_the_public_url_is_kept_with_a_trailing_slash(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[web]\npublic_url = "https://press3.plant:9108"\n')
    assert load_config(path).web.public_url == "https://press3.plant:9108/"


CAMERAS = """
[[cameras]]
name = "top"
source = "synthetic"
product = "p"
trigger = "triggered"

[[cameras]]
name = "side"
source = "synthetic"
product = "p"
"""


@pytest.mark.parametrize(
    ("stations", "problem"),
    [
        ('[[stations]]\nname = "st1"\ncameras = ["top", "nope"]', "station 'st1': no camera 'nope'"),
        ('[[stations]]\nname = "st1"\ncameras = ["side"]', "camera 'side' needs trigger = \"triggered\""),
        ('[[stations]]\nname = "top"\ncameras = ["top"]', "station 'top': the name is taken"),
        ('[[stations]]\nname = "a"\ncameras = ["top"]\n[[stations]]\nname = "b"\ncameras = ["top"]',
         "camera 'top' is in both stations 'a' and 'b'"),
        ('[[stations]]\nname = "st1"\ncameras = []', "cameras"),
    ],
)  # fmt: skip
def test_a_station_names_known_triggered_cameras_each_in_one_station(
    tmp_path: Path, stations: str, problem: str
) -> None:
    assert problem in _error(tmp_path, CAMERAS + stations)


def test_part_id_pattern_is_a_folder_cameras_regular_expression(tmp_path: Path) -> None:
    folder = f'[[cameras]]\nname = "f"\nsource = "folder"\npath = "{tmp_path}"\nproduct = "p"\n'
    assert "not a regular expression" in _error(tmp_path, folder + 'part_id_pattern = "(unclosed"')
    synthetic = '[[cameras]]\nname = "s"\nsource = "synthetic"\nproduct = "p"\npart_id_pattern = "x"\n'
    assert 'part_id_pattern is for source = "folder"' in _error(tmp_path, synthetic)
    config = load_config(_config(tmp_path, folder + 'part_id_pattern = "^(?P<part>[^_]+)_"\n[[stations]]\nname = "g"\n'
                                             'cameras = ["f"]'))  # fmt: skip
    assert config.stations[0].cameras == ["f"] and config.cameras[0].parts


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[store]\nkeep_normal_days = 400\n", "keep_normal_days (400) <= keep_days (365) <= keep_rollup_days (3650)"),
        ("[store]\nkeep_rollup_days = 100\n", "keep_normal_days (30) <= keep_days (365) <= keep_rollup_days (100)"),
        ("[store]\nkeep_days = 0\n", "store.keep_days: Input should be greater than 0"),
        ("[store]\nretention_batch_rows = 0\n", "store.retention_batch_rows: Input should be greater than or equal"),
        (
            "[journal]\nkeep_days = 20\n[store]\nkeep_normal_days = 10\n",
            "store.keep_normal_days (10) must not be below journal.keep_days (20)",
        ),
    ],
)
def test_store_retention_settings_that_would_lose_data_are_refused(tmp_path: Path, text: str, fragment: str) -> None:
    assert fragment in _error(tmp_path, text)


def test_store_retention_defaults(tmp_path: Path) -> None:
    store = load_config(_config(tmp_path, "")).store
    assert (store.keep_normal_days, store.keep_days, store.keep_rollup_days) == (30, 365, 3650)
    assert store.retention_batch_rows == 500 and store.retention_pause_ms == 50
