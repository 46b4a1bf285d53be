"""Shell completion driven through the real shells: bash (tests/cli/test_main.py
has the option cases), zsh through its own completion system (compinit, in an
interactive zsh on a pseudo-terminal, zsh/zpty) and fish (``complete -C``).
zsh and fish are Debian's packages, unpacked into the cache by
``scripts/shells`` (``make test`` runs it). Where a command takes a SERVICE,
every shell offers the releases of the Helmfile found from the current folder
(examples/shop: stock, api, web)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from devstack.cli import completion
from devstack.cli.main import full_parser

REPO = Path(__file__).resolve().parents[2]
SHOP = REPO / "examples" / "shop"
BIN = Path(sys.executable).parent
DEVSTACK = str(BIN / "devstack")
SHOP_SERVICES = {"stock", "api", "web"}


def _shells_root() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    root = cache / "devstack" / "shells" / "root"
    if not (root / "bin" / "zsh").is_file() or not (root / "usr" / "bin" / "fish").is_file():
        pytest.fail(f"zsh and fish are not in {root}: run scripts/shells (make test does)")
    return root


def _script(shell: str) -> str:
    out = subprocess.run(
        [DEVSTACK, "completion", shell], capture_output=True, text=True, check=True
    )
    return out.stdout


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def test_the_commands_that_take_a_service_are_read_from_the_parser() -> None:
    services = completion.service_commands(full_parser())
    assert {"up", "connect", "down", "logs", "curl", "test", "build"} <= set(services)
    assert not {"agent", "init", "completion", "sidecar", "urls"} & set(services)


def test_services_come_from_the_helmfile_found_from_here(tmp_path: Path) -> None:
    got = subprocess.run(
        [DEVSTACK, "completion", "--services"], cwd=SHOP, capture_output=True, text=True
    )
    assert (got.returncode, set(got.stdout.split()), got.stderr) == (0, SHOP_SERVICES, "")
    # no Helmfile, or a broken one: nothing, and no error in the command line
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "helmfile.yaml").write_text("releases: [")
    for cwd in (tmp_path, tmp_path / "broken"):
        got = subprocess.run(
            [DEVSTACK, "completion", "--services"], cwd=cwd, capture_output=True, text=True
        )
        assert (got.returncode, got.stdout, got.stderr) == (0, "", "")


def test_bash_offers_the_helmfiles_services(tmp_path: Path) -> None:
    script = tmp_path / "devstack.bash"
    script.write_text(_script("bash"))

    def offered(line: str) -> set[str]:
        words = line.split(" ")
        program = (
            f"source {script}\nCOMP_WORDS=({' '.join(repr(w) for w in words)})\n"
            f"COMP_CWORD={len(words) - 1}\n_devstack\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n"
        )
        out = subprocess.run(
            ["bash", "--norc", "-c", program], cwd=SHOP, env=_env(), capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        return {w for w in out.stdout.splitlines() if w}

    assert offered("devstack connect ") == SHOP_SERVICES
    assert offered("devstack logs st") == {"stock"}
    # a command without services completes paths
    assert "helmfile.yaml" in offered("devstack init ")


def _zsh(root: Path, tmp_path: Path, typed: str, expect: str) -> str:
    """Type ``typed`` into an interactive zsh whose completion system
    (compinit) has loaded `devstack completion zsh` from its fpath, and read the
    terminal until ``expect`` (a zsh glob) shows up."""
    fdir = tmp_path / "functions"
    fdir.mkdir(exist_ok=True)
    (fdir / "_devstack").write_text(_script("zsh"))
    modules = root / "usr" / "lib" / "x86_64-linux-gnu" / "zsh" / "5.9"
    functions = root / "usr" / "share" / "zsh" / "functions"
    zdot = tmp_path / "zdot"
    zdot.mkdir(exist_ok=True)
    (zdot / ".zshrc").write_text(
        f"module_path=({modules})\n"
        f"fpath=({fdir} {functions}/{{Completion,Completion/*,Misc}}(N/))\n"
        "PS1='> '\n"
        "autoload -Uz compinit && compinit -u -D\n"
    )
    driver = tmp_path / "drive.zsh"
    driver.write_text(
        f"module_path=({modules})\n"
        "zmodload zsh/zpty\n"
        f"zpty z 'ZDOTDIR={zdot} {root}/bin/zsh -i'\n"
        f"zpty -w -n z {typed!r}$'\\t'\n"
        f"zpty -r z out {expect!r}\n"
        'print -r -- "$out"\n'
        "zpty -d z\n"
    )
    out = subprocess.run(
        [str(root / "bin" / "zsh"), "-f", str(driver)],
        cwd=SHOP,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_zsh_completes_through_its_own_completion_system(tmp_path: Path) -> None:
    root = _shells_root()
    assert "devstack connect" in _zsh(root, tmp_path, "devstack conn", "*devstack connect*")
    assert "--tail" in _zsh(root, tmp_path, "devstack logs --ta", "*--tail*")
    # several services: zsh lists them under the line
    listing = _zsh(root, tmp_path, "devstack connect ", "*api*stock*web*")
    assert set(re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", " ", listing).split()) >= SHOP_SERVICES
    assert "stock" in _zsh(root, tmp_path, "devstack up st", "*devstack up stock*")


def test_fish_completes_subcommands_options_and_services(tmp_path: Path) -> None:
    root = _shells_root()
    script = tmp_path / "devstack.fish"
    script.write_text(_script("fish"))
    functions = root / "usr" / "share" / "fish" / "functions"

    def offered(line: str) -> set[str]:
        program = f"set fish_function_path {functions}; source {script}; complete -C {line!r}"
        out = subprocess.run(
            [str(root / "usr" / "bin" / "fish"), "--no-config", "-c", program],
            cwd=SHOP,
            env={**_env(), "LD_LIBRARY_PATH": str(root / "usr" / "lib" / "x86_64-linux-gnu")},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0 and not out.stderr, out.stderr
        return {w.split("\t")[0] for w in out.stdout.splitlines() if w}

    assert offered("devstack conn") == {"connect"}
    assert offered("devstack con") == {"connect", "conflicts"}
    assert offered("devstack connect ") >= SHOP_SERVICES
    assert offered("devstack logs --ta") == {"--tail"}
    assert "--lease-name" in offered("devstack agent --lease")
    assert "--lease-name" not in offered("devstack connect --lease")


def test_completion_without_a_shell_is_one_line() -> None:
    out = subprocess.run([DEVSTACK, "completion"], capture_output=True, text=True)
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr == "devstack completion: name the shell: devstack completion bash|zsh|fish\n"
