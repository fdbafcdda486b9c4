#!/usr/bin/env python3
"""The control API against its description (docs/openapi.yaml), with Schemathesis.

Starts a throwaway node in a temporary directory and gives it some state (a federation, a
proposal in voting with a threaded discussion and a vote, a proposal that is final and executed,
local trust, an announcement, a TASK_REQUEST in its inbox from a second node that is stopped
before the run), then runs `schemathesis run docs/openapi.yaml --checks all`
against it: responses must match the documented status codes, content types, headers and
schemas; schema-valid requests must not be refused with an undocumented status; schema-invalid
ones must get a 4xx; no request may get a 5xx. The key-changing operations run last, against a
third throwaway node. A few responses Schemathesis cannot reach (see EXCLUDED) are checked
against their schemas directly.

    KOSD=… KOSCTL=… python3 tests/api/schemathesis_check.py

Binaries: $KOSD / $KOSCTL, else $CARGO_TARGET_DIR/debug/, else <repo>/target/debug/.
Reports (JUnit XML and NDJSON per run), the generated Schemathesis config and the nodes' logs
go to $KOS_ARTIFACTS (default <repo>/target/api-artifacts/). Needs Python 3.11 and the
`schemathesis` command (4.x; it brings PyYAML and jsonschema). The nodes listen on 127.0.0.1
only (port 0) and dial nothing but each other; the operations that dial an address taken from
the request are not run.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kos_support import REPO, Failure, artifacts_dir, binary  # noqa: E402

SPEC = REPO / "docs" / "openapi.yaml"
STARTED = time.monotonic()
SEED = 20251123
# Bounds: test cases per operation and phase, seconds per run (fuzzing repeats until a run's
# time is spent), seconds per request. The whole script takes about 2.5 minutes on two cores.
MAX_EXAMPLES = 25
REQUEST_TIMEOUT = 10  # the API's own limit is 30 s

# Operations left out of the main run, and why.
EXCLUDED = [
    # Network rule: the test may only talk to 127.0.0.0/8. These dial whatever address the
    # generated body names (a multiaddr; a bootstrap peer once the federation is followed).
    ("POST", "/v1/connect"),
    ("POST", "/v1/federation/join"),
    # These change the node key: after a revocation nothing the node signs counts, so every
    # later state-changing request would be refused for that reason alone. They run last,
    # against a second node of their own (the "keys" run).
    ("POST", "/v1/id/rotate"),
    ("POST", "/v1/id/revoke"),
]

# Operations that run on their own with one check fewer because of a server defect; every
# other check still applies to them. Remove an entry once the server is fixed.
DEFECT_RUNS = [
    # (none: the defects found here were fixed in node/src/api.rs and node/src/dashboard.rs —
    # query values are percent-decoded, a body must be a JSON object, an unknown dashboard
    # file is a JSON 404)
]

# Operations whose schema-valid requests may still be refused with their documented 400,
# because the rule is one a schema cannot state: whether a did:key decodes to an Ed25519 point,
# an envelope's signature, the node's judgement of a message against the governance state
# (voting closed, already sponsored, not the proposer, …), the fields a proposal's kind needs,
# a charter's own rules, a TOML policy's validity, a payload's fit to its message type. For
# these, positive_data_acceptance also accepts 400; every other check applies unchanged, and a
# 5xx is never accepted.
SEMANTIC_400 = [
    # A did:key that matches the pattern but is not an Ed25519 point.
    ("GET", "/v1/delegations"),
    ("GET", "/v1/proposals/{id}/receipt"),
    ("POST", "/v1/federation/create"),
    ("POST", "/v1/messages"),
    ("POST", "/v1/proposals"),
    ("POST", "/v1/proposals/{id}/vote"),
    ("POST", "/v1/proposals/{id}/comment"),
    ("POST", "/v1/proposals/{id}/revise"),
    ("POST", "/v1/proposals/{id}/sponsor"),
    ("POST", "/v1/proposals/{id}/withdraw"),
    ("POST", "/v1/delegate"),
    ("POST", "/v1/send"),
    ("POST", "/v1/reputation"),
    ("POST", "/v1/vectors/send"),
    ("POST", "/v1/policy"),
    ("POST", "/v1/id/rotate"),
    ("POST", "/v1/id/revoke"),
]
POSITIVE_DEFAULT = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]
KEY_OPERATIONS = [("POST", "/v1/id/rotate"), ("POST", "/v1/id/revoke")]


def log(msg):
    print(f"[{time.monotonic() - STARTED:6.1f}s] {msg}", flush=True)


def clean_env():
    """The environment without anything that would point kosd or kosctl elsewhere."""
    env = dict(os.environ)
    for k in ("KOS_API_ADDR", "KOS_API_TOKEN", "KOS_DATA_DIR", "KOS_BOOTSTRAP", "KOS_LISTEN",
              "KOS_API", "KOS_CONFIG", "KOS_NAME", "KOS_DASHBOARD_DIR"):
        env.pop(k, None)
    return env


def label(op):
    return f"{op[0]} {op[1]}"


class Node:
    """`kosd run` on loopback, port 0, in its own process group."""

    def __init__(self, name, kosd, kosctl, root, artifacts):
        self.name, self.kosctl_bin = name, kosctl
        self.data = root / name
        self.log_path = artifacts / f"{name}.log"
        self.log = open(self.log_path, "w", encoding="utf-8")
        self.proc = subprocess.Popen(
            [str(kosd), "--data-dir", str(self.data), "run", "--insecure-plain-key",
             "--listen", "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, env=clean_env())
        self.addr = self.token = None

    def wait_ready(self, timeout=60):
        end = time.monotonic() + timeout
        addr_file, token_file = self.data / "api.addr", self.data / "api.token"
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise Failure(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
            if addr_file.exists() and token_file.exists():
                addr, token = addr_file.read_text().strip(), token_file.read_text().strip()
                if addr.startswith("127.0.0.1:") and len(token) == 64:
                    self.addr, self.token = addr, token
                    try:
                        self.get("/v1/status")
                        return self
                    except OSError:
                        pass
            time.sleep(0.1)
        raise Failure(f"{self.name}: the API did not come up within {timeout} s")

    def get(self, path):
        req = urllib.request.Request(f"http://{self.addr}{path}",
                                     headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read().decode())

    def kosctl(self, *args):
        cmd = [str(self.kosctl_bin), "--data-dir", str(self.data), "--json", *args]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=clean_env())
        if r.returncode != 0:
            raise Failure(f"kosctl {' '.join(args)} on {self.name}: {r.stderr.strip() or r.stdout.strip()}")
        return json.loads(r.stdout) if r.stdout.strip() else {}

    def stop(self):
        if self.log.closed:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
            except ProcessLookupError:
                pass
        self.log.close()


def wait_for(what, fn, timeout=30, interval=0.25):
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        try:
            value = fn()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - keep polling, report the last one
            last = e
        time.sleep(interval)
    raise Failure(f"timed out waiting for {what}" + (f" (last error: {last})" if last else ""))


def prepare(node, other, sender):
    """State for the GETs to return real objects; returns the ids worth probing."""
    node.kosctl("federation", "create", "demo", "--dev-timing")
    # A proposal that becomes final and executes (its certificate and receipt exist).
    done = node.kosctl("propose", "--kind", "configuration", "--title", "Quota 130",
                       "--description", "final", "--key", "relay.quota", "--value", "130",
                       "--discussion-secs", "1", "--voting-secs", "2")["id"]
    # A proposal that stays in voting for the whole run, with a comment, a reply and a vote.
    open_ = node.kosctl("propose", "--kind", "configuration", "--title", "Quota 120",
                        "--description", "open", "--key", "relay.quota", "--value", "120",
                        "--discussion-secs", "1", "--voting-secs", "600")["id"]
    c1 = node.kosctl("comment", open_, "Why 120?", "--kind", "objection")["id"]
    c2 = node.kosctl("comment", open_, "Measured load.", "--parent", c1)["id"]
    wait_for("voting to open", lambda: node.get(f"/v1/proposals/{done}")["status"] == "voting")
    v1 = node.kosctl("vote", done, "yes", "--reason", "measured")["id"]
    wait_for("voting to open", lambda: node.get(f"/v1/proposals/{open_}")["status"] == "voting")
    v2 = node.kosctl("vote", open_, "yes", "--reason", "agreed")["id"]
    other_status = other.get("/v1/status")
    node.kosctl("trust", f"peer://{other_status['peer_id']}", "trusted")
    node.kosctl("trust", "agent://helper.example", "sandbox")
    node.kosctl("block", other_status["peer_id"])
    node.kosctl("unblock", other_status["peer_id"])
    node.kosctl("announce", "maintenance at noon", "--topic", "maintenance")
    inbox = deliver_task(node, sender)
    # DEFECT: with a live peer, blocking it (POST /v1/block, or trust quarantine), its redial
    # being refused, unblocking and blocking it again makes kosd panic (a debug assertion in
    # libp2p-request-response: the block list denies connections after the other behaviours
    # have registered them). The sender is stopped so that the run has no live peer until that
    # is fixed; the defect is reported, not exercised.
    sender.stop()
    wait_for("the first proposal to be final",
             lambda: node.get(f"/v1/proposals/{done}/tally")["certificate"] is not None, timeout=40)
    return {"proposals": [open_, done], "messages": [c1, c2, v1, v2], "inbox": [inbox],
            "did": other_status["did"], "peer": other_status["peer_id"]}


def deliver_task(node, other):
    """A TASK_REQUEST from the other node in this node's inbox (both on 127.0.0.1)."""
    status = node.get("/v1/status")
    listen = next(a for a in status["listen"] if a.startswith("/ip4/127.0.0.1/tcp/"))
    other.kosctl("connect", f"{listen}/p2p/{status['peer_id']}")
    wait_for("the nodes to connect", lambda: status["peer_id"] in other.get("/v1/peers")["connected"])
    payload = json.dumps({"inputs": ["sum 1 2"], "task_id": "t1", "min_trust": "standard"})
    # The other node resolves this node's record in the DHT, which takes a moment after connecting.
    wait_for("the task to be sent", lambda: other.kosctl(
        "send", f"agent://{status['klp_id']}", "--type", "TASK_REQUEST", "--payload", payload))
    return wait_for("the task to arrive", lambda: node.get("/v1/inbox")["messages"])[0]["id"]


def toml_list(values):
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def write_config(path, ids):
    """The Schemathesis config: real ids and keys to draw from, and the per-operation statuses."""
    lines = [
        "# Written by tests/api/schemathesis_check.py for one run.",
        "[dictionaries.ids]",
        f"values = {toml_list(ids['proposals'] + ids['messages'] + ids['inbox'])}",
        "[dictionaries.dids]",
        f"values = {toml_list([ids['did']])}",
        "[dictionaries.peers]",
        f"values = {toml_list([ids['peer'], 'peer://' + ids['peer']])}",
        "",
        "# Real ids half of the time, so that requests reach the code behind the 404.",
        "[parameters]",
        '"path.id" = { dictionary = "ids", probability = 0.5 }',
        "",
    ]
    for op in SEMANTIC_400:
        lines += [
            "[[operations]]",
            f'include-name = "{label(op)}"',
            "[operations.checks.positive_data_acceptance]",
            f"expected-statuses = {toml_list(POSITIVE_DEFAULT + ['400'])}",
            "",
        ]
    # A member's key that decodes (the other node's) for the did:key fields that are read, and
    # a real peer for the peer fields.
    bindings = [("/v1/delegate", "to", "dids", 0.5), ("/v1/reputation", "subject", "dids", 0.5)]
    bindings += [(p, "peer", "peers", 0.3) for p in ("/v1/block", "/v1/unblock", "/v1/disconnect")]
    for path_, field, dictionary, probability in bindings:
        lines += [
            "[[operations]]",
            f'include-name = "POST {path_}"',
            "[operations.parameters]",
            f'"body.{field}" = {{ dictionary = "{dictionary}", probability = {probability} }}',
            "",
        ]
    path.write_text("\n".join(lines))


def schemathesis(run, node, config, artifacts, *, include=(), exclude=(), exclude_checks=(),
                 max_time=60):
    exe = shutil.which("schemathesis") or shutil.which("st")
    if not exe:
        raise Failure("the schemathesis command is not installed")
    junit, ndjson = artifacts / f"{run}.junit.xml", artifacts / f"{run}.ndjson"
    cmd = [exe, "--config-file", str(config), "run", str(SPEC),
           "--url", f"http://{node.addr}",
           "-H", f"Authorization: Bearer {node.token}",
           # Every check. use_after_free and ensure_resource_availability act only in the
           # stateful phase, which needs OpenAPI links the description does not declare; they
           # stay selected and find nothing to look at.
           "--checks", "all",
           "--phases", "examples,coverage,fuzzing",
           "--max-examples", str(MAX_EXAMPLES),
           "--max-time", str(max_time),
           "--request-timeout", str(REQUEST_TIMEOUT),
           "--max-redirects", "0",  # GET / must answer its own 303
           "--seed", str(SEED),
           "--workers", "1",
           "--no-color",
           "--report", "junit,ndjson",
           "--report-junit-path", str(junit),
           "--report-ndjson-path", str(ndjson)]
    if exclude_checks:
        cmd += ["--exclude-checks", ",".join(exclude_checks)]
    # Operations are named "METHOD /path", as Schemathesis prints them.
    for op in include:
        cmd += ["--include-name", label(op)]
    for op in exclude:
        cmd += ["--exclude-name", label(op)]
    what = ("only " + ", ".join(map(label, include))) if include else f"{len(exclude)} operations excluded"
    if exclude_checks:
        what += f"; without {', '.join(exclude_checks)}"
    log(f"{run}: schemathesis run ({what})")
    shown = ["Authorization: Bearer …" if c.startswith("Authorization:") else c for c in cmd]
    (artifacts / f"{run}.command.txt").write_text(" ".join(shown) + "\n")
    r = subprocess.run(cmd, capture_output=True, text=True, env=clean_env(), cwd=artifacts,
                       timeout=max_time + 90)
    (artifacts / f"{run}.out.txt").write_text(r.stdout + r.stderr)
    return r, junit


def spot_checks(node, ids):
    """Responses Schemathesis may not reach with real values, against their documented schemas:
    the query routes with a real member, voter and address (fetched with unescaped values, as
    kosctl sends them), and the inbox message (which the fuzzer may delete before it reads it)."""
    import urllib.parse

    import jsonschema
    import yaml

    spec = yaml.safe_load(SPEC.read_text())
    status = node.get("/v1/status")
    cases = [
        ("/v1/delegations", f"/v1/delegations?member={status['did']}"),
        ("/v1/proposals/{id}/receipt",
         f"/v1/proposals/{ids['proposals'][1]}/receipt?voter={status['did']}"),
        ("/v1/resolve", f"/v1/resolve?address=agent://{status['klp_id']}"),
        ("/v1/inbox/{id}", f"/v1/inbox/{ids['inbox'][0]}"),
    ]
    problems = []
    for template, url in cases:
        try:
            body = node.get(url)
        except urllib.error.HTTPError as e:
            problems.append(f"GET {url}: {e.code} {e.read().decode(errors='replace')}")
            continue
        # The whole description is the root, so that its "#/components/…" references resolve.
        pointer = "/".join(["#", "paths", template.replace("~", "~0").replace("/", "~1"), "get",
                            "responses", "200", "content", "application~1json", "schema"])
        root = dict(spec, **{"$ref": urllib.parse.quote(pointer, safe="#/~")})
        errors = list(jsonschema.Draft202012Validator(root).iter_errors(body))
        problems += [f"GET {url}: {e.message} at {list(e.absolute_path)}" for e in errors[:3]]
    return len(cases), problems


def junit_summary(junit):
    root = ET.parse(junit).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    return tuple(sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors"))


def summary_block(text):
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if "SUMMARY" in line:
            return "\n".join(lines[i:])
    return "\n".join(lines[-30:])


def main():
    kosd, kosctl = binary("kosd"), binary("kosctl")
    for b in (kosd, kosctl):
        if not b.exists():
            raise Failure(f"{b} not found: build it, or set KOSD and KOSCTL")
    artifacts = artifacts_dir("api-artifacts")
    artifacts.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="kos-api-"))
    nodes, results = [], []
    spot = (0, [])
    try:
        main_node = Node("node-main", kosd, kosctl, root, artifacts)
        key_node = Node("node-keys", kosd, kosctl, root, artifacts)
        sender = Node("node-sender", kosd, kosctl, root, artifacts)
        nodes += [main_node, key_node, sender]
        for n in nodes:
            n.wait_ready()
        key_node.kosctl("federation", "create", "keys", "--dev-timing")
        log(f"nodes up: {main_node.addr} (main), {key_node.addr} (keys), {sender.addr} (sender)")
        ids = prepare(main_node, key_node, sender)
        log(f"state ready: proposals {', '.join(p[:8] for p in ids['proposals'])}; "
            f"comments and votes {', '.join(m[:8] for m in ids['messages'])}; "
            f"inbox {ids['inbox'][0][:8]}")
        spot = spot_checks(main_node, ids)
        config = root / "schemathesis.toml"
        write_config(config, ids)
        shutil.copy(config, artifacts / "schemathesis.toml")

        defect_ops = [op for _, ops, _ in DEFECT_RUNS for op in ops]
        results.append(("main", *schemathesis("main", main_node, config, artifacts,
                                              exclude=EXCLUDED + defect_ops, max_time=100)))
        for run, ops, checks in DEFECT_RUNS:
            results.append((run, *schemathesis(run, main_node, config, artifacts, include=ops,
                                               exclude_checks=checks, max_time=10)))
        # Last, and on the other node: the key-changing operations.
        results.append(("keys", *schemathesis("keys", key_node, config, artifacts,
                                              include=KEY_OPERATIONS, max_time=20)))
        # A node that died during a run is a finding of its own (its log has the reason).
        died = [n for n in (main_node, key_node) if n.proc.poll() is not None]
    finally:
        for n in nodes:
            n.stop()
        shutil.rmtree(root, ignore_errors=True)

    ok = not died
    for n in died:
        print(f"{n.name} exited with status {n.proc.returncode} during the run: see {n.log_path}")
    print()
    for run, r, junit in results:
        print(f"==== {run} (schemathesis exit status {r.returncode}) ====")
        print(summary_block(r.stdout))
        if junit.exists():
            tests, failures, errors = junit_summary(junit)
            print(f"junit: {tests} operations, {failures} failed, {errors} errors")
        if r.returncode != 0:
            ok = False
            if "SUMMARY" not in r.stdout:
                print(r.stdout[-3000:], r.stderr[-3000:], sep="\n")
    checked, problems = spot
    print(f"==== spot checks of excluded GETs: {checked} responses, {len(problems)} problems ====")
    for p in problems:
        print(f"  {p}")
        ok = False
    print(f"\nexcluded from the main run: {', '.join(map(label, EXCLUDED))}")
    alone = "; ".join(", ".join(map(label, ops)) + " without " + ", ".join(c)
                      for _, ops, c in DEFECT_RUNS)
    print(f"run alone, without the check a defect fails: {alone}")
    print(f"artifacts: {artifacts}; {time.monotonic() - STARTED:.0f} s in all")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Failure as e:
        print(f"FAIL: {e}", file=sys.stderr)
        sys.exit(1)
