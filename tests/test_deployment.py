"""The deployment files agree with the code: docs/DEPLOYMENT.md documents exactly the environment
variables `hatcat.config` reads, and the Dockerfile and docker-compose.yml set no HatCat variable
that does not exist."""

from __future__ import annotations

import ast
import re

import yaml

from hatcat.config import ConfigError, Settings
from hatcat.paths import ROOT


def variables_read_by_config() -> set[str]:
    """Every environment-variable name written as a string in `Settings.from_env`."""
    tree = ast.parse((ROOT / "hatcat" / "config.py").read_text())
    from_env = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "from_env")
    return {
        n.value
        for n in ast.walk(from_env)
        if isinstance(n, ast.Constant)
        and isinstance(n.value, str)
        and re.fullmatch(r"[A-Z][A-Z0-9_]*_[A-Z0-9_]+|PORT", n.value)
    }


def documented_variables() -> list[str]:
    """First-column names of the table under '## Environment variables' in docs/DEPLOYMENT.md."""
    text = (ROOT / "docs" / "DEPLOYMENT.md").read_text()
    section = text.split("\n## Environment variables\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return [re.match(r"\| `([A-Z0-9_]+)`", row).group(1) for row in rows]


def test_config_reads_what_the_parser_finds() -> None:
    """The AST scan is not vacuous: each variable it finds changes Settings when set."""
    found = variables_read_by_config()
    assert {"HATCAT_MODEL_NAME", "HATCAT_PORT", "GRADIO_SERVER_PORT", "PORT", "HF_HUB_OFFLINE"} <= found
    samples = {
        "HATCAT_PORT": "9001",
        "GRADIO_SERVER_PORT": "9001",
        "PORT": "9001",
        "HATCAT_HOST": "0.0.0.0",
        "GRADIO_SERVER_NAME": "0.0.0.0",
        "HATCAT_BASE_LAYERS": "0,1",
        "HATCAT_KEEP_TOP_K": "7",
        "HATCAT_DEVICE": "cpu",
        "HATCAT_DTYPE": "float32",
        "HATCAT_CORS_ORIGINS": "*",
        "HATCAT_MAX_TOKENS": "9",
        "HF_HUB_OFFLINE": "1",
    }
    for name in sorted(found):
        try:
            changed = Settings.from_env({name: samples.get(name, "/tmp/x")}) != Settings.from_env({})
        except ConfigError:
            changed = True  # rejected the sample value: read all the same
        assert changed, f"{name} does not change Settings"


def test_deployment_doc_lists_every_variable_once_and_nothing_else() -> None:
    documented = documented_variables()
    assert len(documented) == len(set(documented)), "a variable is documented twice"
    read = variables_read_by_config()
    assert set(documented) - read == set(), "documented but not read by hatcat/config.py"
    assert read - set(documented) == set(), "read by hatcat/config.py but not documented in docs/DEPLOYMENT.md"


def test_dockerfile_and_compose_set_only_real_hatcat_variables() -> None:
    read = variables_read_by_config()
    dockerfile = (ROOT / "Dockerfile").read_text()
    set_in_image = set(re.findall(r"\b(HATCAT_[A-Z_]+)=", dockerfile))
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    set_in_compose = {
        name
        for service in compose["services"].values()
        for name in (service.get("environment") or {})
        if name.startswith("HATCAT_")
    }
    assert set_in_image and set_in_compose
    assert set_in_image | set_in_compose <= read
    # the image listens on the port it exposes and checks
    assert "EXPOSE 8765" in dockerfile and "HATCAT_PORT=8765" in dockerfile and "HEALTHCHECK" in dockerfile


def test_compose_wires_openwebui_to_hatcat() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    for webui, backend in (("open-webui", "hatcat"), ("open-webui-gpu", "hatcat-gpu")):
        env = services[webui]["environment"]
        assert env["OPENAI_API_BASE_URLS"] == f"http://{backend}:8765/v1"
        # access control on by default: users from the mounted users file, OpenWebUI on its service key
        assert services[backend]["environment"]["HATCAT_USERS_FILE"] == "/config/users.yaml"
        assert "./deploy/users.yaml:/config/users.yaml:ro" in services[backend]["volumes"]
        assert env["OPENAI_API_KEYS"] == "${HATCAT_OPENWEBUI_KEY:-}"
        assert env["DEFAULT_MODELS"] == "hatcat-divergence" and env["ENABLE_SIGNUP"] == "false"
        assert services[webui]["depends_on"][backend]["condition"] == "service_healthy"
    assert services["hatcat-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"


def test_compose_installs_the_openwebui_functions_once_openwebui_is_healthy() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for installer, webui, backend in (
        ("openwebui-functions", "open-webui", "hatcat"),
        ("openwebui-functions-gpu", "open-webui-gpu", "hatcat-gpu"),
    ):
        service, env = services[installer], services[webui]["environment"]
        command = service["command"]
        arg = {flag: command[command.index(flag) + 1] for flag in ("--url", "--hatcat-url", "--email", "--password")}
        assert command[:4] == ["python", "-m", "hatcat.openwebui", "install"]
        assert service["image"] == services[backend]["image"] and service["build"] == services[backend]["build"]
        assert service["restart"] == "no"
        assert service["depends_on"][webui]["condition"] == "service_healthy" and "healthcheck" in services[webui]
        assert arg["--url"] == f"http://{webui}:8080" and arg["--hatcat-url"] == f"http://{backend}:8765"
        # the installer signs in as the admin OpenWebUI creates at its first start
        assert (arg["--email"], arg["--password"]) == (env["WEBUI_ADMIN_EMAIL"], env["WEBUI_ADMIN_PASSWORD"])
        # the Action calls HatCat with OpenWebUI's service key, as OpenWebUI itself does
        assert command[command.index("--api-key") + 1] == env["OPENAI_API_KEYS"]
        assert services[webui]["image"].endswith(":v0.12.4")  # the version the functions are checked against
