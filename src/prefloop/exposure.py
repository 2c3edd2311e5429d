"""Who may reach a prefloop web server: the one policy for every command that listens on a port.

`prefloop serve` and `prefloop label` bind to 127.0.0.1 by default. Binding anywhere else makes
the server reachable from other machines, so it must be protected (serve: `--api-key`,
label: `--auth users.txt`); otherwise the command refuses to start unless the user
says, with `--insecure`, that an open server on that address is what they want.
"""

from __future__ import annotations

import ipaddress

from prefloop.errors import ConfigError


def is_loopback(host: str) -> bool:
    """True when `host` is reachable only from this machine: "localhost" or a loopback address
    (127.0.0.0/8, ::1). Anything else (0.0.0.0, ::, a LAN or public address, a host name) is not."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_exposure(command: str, host: str, protected: bool, protect_with: str, insecure: bool = False) -> str | None:
    """Refuse to listen on a non-loopback `host` without protection, unless `insecure`.

    `protected` says whether the command's protection (`protect_with`, e.g. "--auth users.txt") is
    on. Raises ConfigError naming the flags that fix it; returns a warning line to print when the
    user chose `--insecure` on a reachable address, else None.
    """
    if is_loopback(host) or protected:
        return None
    if not insecure:
        raise ConfigError(
            f"--host {host} makes `prefloop {command}` reachable from other machines, and it has no protection: "
            f"add {protect_with}, keep the default --host 127.0.0.1, or add --insecure if an open server on "
            f"{host} is really what you want")
    return (f"prefloop {command}: warning: listening on {host} without {protect_with.split()[0]} (--insecure): "
            "anyone who can reach this machine can use it")
