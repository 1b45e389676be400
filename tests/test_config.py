"""Settings parse the environment; bad values stop start-up with one line."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from hatcat.api.protocol import ChatCompletionRequest
from hatcat.api.serving import generation_settings
from hatcat.config import EMBEDDED_DEFAULT, ConfigError, Settings
from hatcat.corpus import main as corpus_main
from hatcat.serve_ray import main as serve_ray_main
from tests.support import run_app, run_main


def test_defaults_select_embedded_model_on_port_8765() -> None:
    settings = Settings.from_env({})
    assert settings.model_name == EMBEDDED_DEFAULT
    assert settings.port == 8765
    assert settings.base_layers == (0,)
    assert settings.keep_top_k == 100
    assert settings.api_key is None
    assert (settings.device, settings.dtype) == ("auto", "auto")


def test_values_are_parsed_from_environment() -> None:
    settings = Settings.from_env(
        {
            "HATCAT_MODEL_NAME": "google/gemma-3-4b-pt",
            "HATCAT_PORT": "9000",
            "HATCAT_BASE_LAYERS": "1, 0,2",
            "HATCAT_KEEP_TOP_K": "25",
            "HATCAT_DEVICE": "cuda:1",
            "HATCAT_DTYPE": "bfloat16",
            "HATCAT_API_KEY": "secret",
            "HF_HUB_OFFLINE": "1",
            "HATCAT_AUTO_TRAIN": "1",
            "HATCAT_AUTO_TRAIN_LIMIT": "3",
        }
    )
    assert (settings.auto_train, settings.auto_train_limit) == (True, 3)
    assert settings.model_name == "google/gemma-3-4b-pt"
    assert settings.port == 9000
    assert settings.base_layers == (0, 1, 2)
    assert settings.keep_top_k == 25
    assert settings.device == "cuda:1"
    assert settings.dtype == "bfloat16"
    assert settings.api_key == "secret"
    assert settings.hf_offline is True


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("HATCAT_PORT", "eighty"),
        ("HATCAT_PORT", "70000"),
        ("HATCAT_KEEP_TOP_K", "0"),
        ("HATCAT_KEEP_TOP_K", "many"),
        ("HATCAT_BASE_LAYERS", "0,9"),
        ("HATCAT_DEVICE", "tpu"),
        ("HATCAT_DTYPE", "int3"),
        ("HF_HUB_OFFLINE", "maybe"),
        ("HATCAT_AUTO_TRAIN", "sometimes"),
        ("HATCAT_AUTO_TRAIN_LIMIT", "0"),
        ("HATCAT_MAX_BODY_BYTES", "10"),
        ("HATCAT_RATE_LIMIT", "-1"),
        ("HATCAT_MAX_STREAMS", "lots"),
    ],
)
def test_bad_value_raises_one_line_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({name: value})
    message = str(err.value)
    assert name in message and "allowed" in message
    assert "\n" not in message


@pytest.mark.slow  # starts a Python that imports torch
@pytest.mark.parametrize("env", [{"HATCAT_PORT": "abc"}, {"HATCAT_KEEP_TOP_K": "-3"}])
def test_app_refuses_bad_setting_with_exit_2_and_one_line(env: dict[str, str]) -> None:
    result = run_app(env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert next(iter(env)) in lines[0]


def test_record_store_url_defaults_to_sqlite_under_the_cache_dir() -> None:
    assert Settings.from_env({"HATCAT_CACHE_DIR": "/srv/hc"}).db_url == "sqlite:////srv/hc/hatcat.db"
    assert Settings.from_env({"HATCAT_DB": "/var/lib/hc.db"}).db_url == "sqlite:////var/lib/hc.db"
    url = "postgresql+psycopg://hc:pw@db/hatcat"
    assert Settings.from_env({"HATCAT_DB": url}).db_url == url
    assert not Settings.from_env({}).access_control
    assert Settings.from_env({"HATCAT_USERS_FILE": "/etc/hc/users.yaml"}).access_control


def test_port_and_host_come_from_spaces_variables_when_hatcat_ones_are_unset() -> None:
    spaces = {"PORT": "7861", "GRADIO_SERVER_PORT": "7860", "GRADIO_SERVER_NAME": "0.0.0.0"}
    assert (Settings.from_env(spaces).port, Settings.from_env(spaces).host) == (7860, "0.0.0.0")
    assert Settings.from_env({"PORT": "7861"}).port == 7861
    assert Settings.from_env({**spaces, "HATCAT_PORT": "9001", "HATCAT_HOST": "127.0.0.2"}).port == 9001
    assert Settings.from_env({**spaces, "HATCAT_HOST": "127.0.0.2"}).host == "127.0.0.2"
    with pytest.raises(ConfigError, match="^PORT="):
        Settings.from_env({"PORT": "http"})


@pytest.mark.parametrize(
    "name, value, module, extra",
    [
        ("HATCAT_SESSION_STORE", "redis://cache:6379/0", "redis", "hatcat[scale]"),
        ("HATCAT_DB", "postgresql+psycopg://hc@db/hatcat", "psycopg", "psycopg[binary]"),
    ],
)
def test_a_setting_whose_optional_package_is_missing_is_refused_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, module: str, extra: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    with pytest.raises(ConfigError) as err:
        Settings.from_env({name: value})
    message = str(err.value)
    assert name in message and module in message and extra in message and "\n" not in message


@pytest.mark.parametrize("main", [serve_ray_main, corpus_main])
def test_a_scale_command_without_ray_exits_2_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, main
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    (tmp_path / "in.jsonl").write_text('"a text"\n')
    argv = (
        []
        if main is serve_ray_main
        else ["analyze", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "o")]
    )
    code, err = run_main(main, argv, capsys)
    assert code == 2 and "'ray'" in err and "hatcat[scale]" in err and len(err.strip().splitlines()) == 1, err


def test_a_chat_request_without_max_tokens_gets_the_default_length() -> None:
    settings = Settings.from_env({"HATCAT_DEFAULT_MAX_TOKENS": "96", "HATCAT_MAX_TOKENS": "1000"})
    assert Settings.from_env({}).default_max_tokens == 128
    body = lambda **extra: ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}], **extra)
    assert generation_settings(body(), settings.max_tokens, settings.default_max_tokens).max_tokens == 96
    assert generation_settings(body(max_tokens=300), settings.max_tokens, settings.default_max_tokens).max_tokens == 300
    assert generation_settings(body(), 50, settings.default_max_tokens).max_tokens == 50  # never above the limit
