"""The attack suite (issue 6): the sandbox's code is the attacker. It runs against the same real
daemon, PKI, recording origins and DNS server as the end-to-end suite, with the same checks at
teardown (exit status, sanitizer reports, no secret in any log, well-formed audit lines).

How the e2e fixtures are shared without copying them: tests/e2e/conftest.py is loaded once more
as an ordinary module named `e2e_conftest` (importlib, from its path), and the fixtures and the
report hook this suite uses are bound as names of this conftest. pytest collects fixtures and
hooks from a conftest's attributes, wherever the functions were defined, so they apply here
exactly as in tests/e2e (scoped to tests/attack). Why not the alternatives:
  * `from conftest import *`: both files are top-level modules called `conftest`; pytest drops
    `conftest` from sys.modules before importing each one, so the name means whichever was
    loaded last. And `*` skips `_no_secret_leaks`.
  * `pytest_plugins = [...]`: pytest refuses it outside the rootdir's conftest as soon as this
    conftest is not an initial one (e.g. `pytest tests`), and a plugin's fixtures and hooks
    would apply to every test of the session, e2e included, a second time.
Loading e2e's conftest also puts tests/e2e on sys.path (it does so itself), so `helpers` (the
raw client, origins, DNS server) imports as it does there. Tests import shared helpers from
`e2e_conftest` (header_rule, Stack) and attack-only helpers from `attacklib` (this directory).

Run:  AUTHPROXY_BIN=build/authproxy /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/attack
"""
import importlib.util
import os
import sys

import pytest

E2E_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "e2e"))


def _load_e2e_conftest():
    mod = sys.modules.get("e2e_conftest")
    if mod is not None:
        return mod
    spec = importlib.util.spec_from_file_location("e2e_conftest",
                                                  os.path.join(E2E_DIR, "conftest.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules["e2e_conftest"] = mod  # before exec: helpers import it back by this name
    spec.loader.exec_module(mod)
    return mod


_e2e = _load_e2e_conftest()

# Fixtures (session: authproxy_bin, pki, dns, git_repo, provider_leaf, sdk_dir; per test:
# _no_secret_leaks, stack, ctl) and the hook that attaches daemon logs to failure reports.
authproxy_bin = _e2e.authproxy_bin
pki = _e2e.pki
dns = _e2e.dns
git_repo = _e2e.git_repo
provider_leaf = _e2e.provider_leaf
sdk_dir = _e2e.sdk_dir
_no_secret_leaks = _e2e._no_secret_leaks
stack = _e2e.stack
ctl = _e2e.ctl
pytest_runtest_makereport = _e2e.pytest_runtest_makereport


# -- one daemon for many probes -------------------------------------------------------------------
# Most probes need the same daemon and origins and differ only in the bytes they send: a daemon
# per probe would cost ~0.5 s each (start, SIGTERM, checks), most of this suite's runtime. A
# module-scoped stack gets the same end-of-life checks as e2e's per-test ones: exit status and
# sanitizer report (Stack.teardown), and the secret/audit scan of _no_secret_leaks (repeated
# here because e2e has it only inside that fixture's body).

def leak_problems(daemons):
    """What e2e's _no_secret_leaks reports for these daemons, as a list of strings."""
    problems = []
    for d in daemons:
        texts = (("audit log", d.audit_text()), ("stderr", d.stderr_text()),
                 ("stdout", _e2e._read(d.stdout_path)))
        for label, text in texts:
            for s in sorted(_e2e.SESSION_SECRETS):
                if s in text:
                    problems.append("secret %s... found in %s of %s" % (s[:10], label, d.dir))
        audit = texts[0][1]
        if audit and not audit.endswith("\n"):
            problems.append("%s: audit log does not end with a complete line" % d.dir)
        for i, line in enumerate(audit.splitlines()):
            problems += ["%s: audit line %d: %s" % (d.dir, i + 1, p)
                         for p in _e2e.audit_line_problems(line)]
    return problems


@pytest.fixture(scope="module")
def shared_stack(request, tmp_path_factory, pki, dns, authproxy_bin):
    """A Stack whose daemons and origins live for the whole test module. Probes using it must
    leave the daemon as they found it (attacklib.reset_origin clears an origin's records)."""
    daemons = []
    s = _e2e.Stack(str(tmp_path_factory.mktemp("shared")), pki, dns, authproxy_bin,
                   lambda: request.getfixturevalue("git_repo"), daemons)
    yield s
    s.teardown()
    problems = leak_problems(daemons)
    assert not problems, "\n".join(problems[:20])
