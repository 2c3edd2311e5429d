"""One policy for every prefloop server: a reachable address needs protection or an explicit --insecure."""

import subprocess
import sys

import pytest

from prefloop.errors import ConfigError
from prefloop.exposure import check_exposure, is_loopback


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.0.0.2", True), ("localhost", True),
                                            ("::1", True), ("[::1]", True), ("0.0.0.0", False), ("::", False),
                                            ("192.168.1.5", False), ("my-laptop.lan", False)])
def test_loopback_addresses(host, loopback):
    assert is_loopback(host) is loopback


def test_refused_unless_protected_or_insecure():
    assert check_exposure("serve", "127.0.0.1", False, "--api-key KEY") is None
    assert check_exposure("serve", "0.0.0.0", True, "--api-key KEY") is None
    with pytest.raises(ConfigError, match="add --api-key KEY.*--insecure"):
        check_exposure("serve", "0.0.0.0", False, "--api-key KEY")
    warning = check_exposure("serve", "0.0.0.0", False, "--api-key KEY", insecure=True)
    assert "0.0.0.0" in warning and "--insecure" in warning


@pytest.mark.parametrize("command", [["serve", "no-such-model"], ["label", "--pairs", "no-such-file.jsonl"]])
def test_serve_and_label_refuse_a_public_address_without_protection(command, tmp_path):
    """Both commands stop at once with exit code 2 (before loading a model or reading any file)."""
    result = subprocess.run([sys.executable, "-m", "prefloop", *command, "--host", "0.0.0.0"], capture_output=True,
                            text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    protect = "--api-key" if command[0] == "serve" else "--auth"
    assert f"--host 0.0.0.0 makes `prefloop {command[0]}` reachable" in result.stderr
    assert protect in result.stderr and "--insecure" in result.stderr
