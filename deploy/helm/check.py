#!/usr/bin/env python3
"""`make helm-check`: the coffer chart, rendered offline and checked.

For every value set in deploy/helm/values/ (default, 5 voters, 4 sites, TLS
from existing Secrets):

1. the merged values (chart defaults + the file) are validated against
   values.schema.json, by Helm itself and by check-jsonschema;
2. `helm lint --strict` runs for the oldest and the newest version checked;
3. the chart is rendered (Helm's Go SDK through helm-python-sdk: no helm
   binary, no cluster) and yamllint reads the output;
4. every rendered object of a built-in kind is validated strictly (unknown
   fields are errors) against the bundled schemas of each Kubernetes
   version from 1.29 to 1.35 (kubernetes-validate); objects of CRDs
   (cert-manager Certificate, ServiceMonitor) have no bundled schema, so
   they get only the structural checks below;
5. with --coffer BIN, every config file of the ConfigMap is loaded by the
   coffer binary itself (`coffer meta|storage --config F --print-config`),
   which refuses unknown keys and bad values;
6. the chart's invariants are checked on the objects themselves: the
   voters' StatefulSet (Parallel, spread over zones with DoNotSchedule, no
   preStop, ordinal -> config file), the headless Service publishing
   not-ready addresses, one pinned storage StatefulSet per site given its
   site, the PodDisruptionBudgets, probes on the admin port, the config
   checksum, TLS mounted as a directory, and the security contexts.

Value sets that must be refused (deploy/helm/values/bad/) must fail the
schema. Exits 1 naming every failure.
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import yaml

HERE = Path(__file__).resolve().parent
CHART = HERE / "coffer"
VALUES = HERE / "values"
KUBE_VERSIONS = [f"1.{minor}.0" for minor in range(29, 36)]
RELEASE, NAMESPACE = "coffer", "backup"
# Kinds rendered from CRDs: no schema ships with kubernetes-validate.
CRD_KINDS = {("cert-manager.io/v1", "Certificate"), ("monitoring.coreos.com/v1", "ServiceMonitor")}

failures = []


def fail(where, what):
    failures.append(f"{where}: {what}")
    print(f"  FAIL {where}: {what}")


def check(cond, where, what):
    if not cond:
        fail(where, what)
    return cond


def schema_errors(values, venv):
    """check-jsonschema's verdict on a values document, or None if valid."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(values, f)
    try:
        r = subprocess.run(
            [str(Path(venv) / "bin" / "check-jsonschema"), "--schemafile", str(CHART / "values.schema.json"), f.name],
            capture_output=True,
            text=True,
        )
    finally:
        os.unlink(f.name)
    return None if r.returncode == 0 else (r.stdout + r.stderr).strip()


def load_values(path):
    with open(path) as f:
        return yaml.safe_load(f) or {}


def yamllint(text, where, venv):
    # Helm's toYaml writes sequences unindented, the templates indent theirs:
    # both are valid, consistency within a block is what matters.
    conf = (
        "{extends: default, rules: {line-length: disable, document-start: disable,"
        " comments-indentation: disable, indentation: {indent-sequences: whatever}}}"
    )
    r = subprocess.run(
        [str(Path(venv) / "bin" / "yamllint"), "-f", "parsable", "-d", conf, "-"],
        input=text,
        capture_output=True,
        text=True,
    )
    check(r.returncode == 0, where, "yamllint:\n" + r.stdout + r.stderr)


def container(obj):
    return obj["spec"]["template"]["spec"]["containers"][0]


def check_pod_template(obj, where, config_checksum):
    spec = obj["spec"]["template"]["spec"]
    ann = obj["spec"]["template"]["metadata"].get("annotations", {})
    check(ann.get("checksum/config") == config_checksum, where, "the pod template lacks the config checksum")
    psc = spec.get("securityContext", {})
    check(psc.get("runAsNonRoot") is True and psc.get("runAsUser", 0) != 0, where, "the pod may run as root")
    c = container(obj)
    sc = c.get("securityContext", {})
    check(sc.get("readOnlyRootFilesystem") is True, where, "the root file system is writable")
    check(sc.get("allowPrivilegeEscalation") is False, where, "privilege escalation is allowed")
    check("ALL" in sc.get("capabilities", {}).get("drop", []), where, "capabilities are not all dropped")
    check("resources" in c and c["resources"].get("requests"), where, "no resource requests")
    check("preStop" not in c.get("lifecycle", {}), where, "a preStop hook (no member removal on stop)")
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz"), ("startupProbe", "/livez")):
        get = c.get(probe, {}).get("httpGet", {})
        check(get.get("port") == "admin" and "admin" in ports, where, f"{probe} is not on the admin port")
        check(get.get("path") == path, where, f"{probe} does not GET {path}")
    mounts = c.get("volumeMounts", [])
    check(all("subPath" not in m for m in mounts), where, "a subPath mount (rotation would not reach the pod)")
    tls = [m for m in mounts if m["name"] == "tls"]
    check(tls and tls[0]["mountPath"] == "/etc/coffer/tls", where, "TLS is not mounted as /etc/coffer/tls")
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    check("secret" in vols.get("tls", {}), where, "the tls volume is not a Secret")
    return c


def check_invariants(objs, values, where, checksum):
    by_kind = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o)
    cms = [o for o in by_kind.get("ConfigMap", []) if o["metadata"]["name"].endswith("-config")]
    if not check(len(cms) == 1, where, "not exactly one config ConfigMap"):
        return
    cm = cms[0]["data"]

    voters = values["metadata"]["replicas"]
    sts = by_kind.get("StatefulSet", [])
    meta = [s for s in sts if s["metadata"]["labels"].get("app.kubernetes.io/component") == "meta"]
    storage = [s for s in sts if s["metadata"]["labels"].get("app.kubernetes.io/component") == "storage"]
    if check(len(meta) == 1, where, "not exactly one voters StatefulSet"):
        m = meta[0]
        w = f"{where} StatefulSet/{m['metadata']['name']}"
        check(m["spec"]["replicas"] == voters, w, f"replicas {m['spec']['replicas']} != {voters}")
        check(m["spec"].get("podManagementPolicy") == "Parallel", w, "podManagementPolicy is not Parallel")
        tsc = m["spec"]["template"]["spec"].get("topologySpreadConstraints", [])
        check(
            any(t["topologyKey"] == "topology.kubernetes.io/zone" and t["whenUnsatisfiable"] == "DoNotSchedule" for t in tsc),
            w,
            "no DoNotSchedule spread over topology.kubernetes.io/zone",
        )
        c = check_pod_template(m, w, checksum)
        check("--config" in c["args"] and c["args"][-1].endswith("meta-$(POD_INDEX).toml"), w, "the config file is not chosen by ordinal")
        env = {e["name"]: e for e in c.get("env", [])}
        check(
            env.get("POD_INDEX", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
            == "metadata.labels['apps.kubernetes.io/pod-index']",
            w,
            "POD_INDEX does not come from the pod-index label",
        )
        headless = [s for s in by_kind.get("Service", []) if s["metadata"]["name"] == m["spec"]["serviceName"]]
        if check(headless, w, "its serviceName names no Service"):
            h = headless[0]["spec"]
            check(h.get("clusterIP") == "None" and h.get("publishNotReadyAddresses") is True, w, "the headless Service does not publish not-ready addresses")
        # Ordinal -> Raft id; pod 0 bootstraps, the others join.
        for i in range(voters):
            text = cm.get(f"meta-{i}.toml")
            if not check(text is not None, where, f"no meta-{i}.toml"):
                continue
            check(f"id = {i + 1}\n" in text, where, f"meta-{i}.toml does not set id = {i + 1}")
            boot = i == 0 and values["metadata"]["initialize"]
            check(("init = true" in text) == boot and ("join = " in text) != boot, where, f"meta-{i}.toml init/join wrong")
        check(f"meta-{voters}.toml" not in cm, where, "a config for a voter that does not exist")

    sites = values["sites"]
    by_site = {s["metadata"]["labels"].get("coffer.io/site"): s for s in storage}
    check(set(by_site) == set(sites), where, f"storage StatefulSets for {sorted(by_site)}, sites {sorted(sites)}")
    for name, site in sites.items():
        s = by_site.get(name)
        if s is None:
            continue
        w = f"{where} StatefulSet/{s['metadata']['name']}"
        check(s["spec"]["replicas"] == site["replicas"], w, "replicas differ from the site's")
        ns = s["spec"]["template"]["spec"].get("nodeSelector", {})
        check(ns.get("topology.kubernetes.io/zone") == site["zone"], w, f"not pinned to zone {site['zone']}")
        c = check_pod_template(s, w, checksum)
        args = c["args"]
        check("--site" in args and args[args.index("--site") + 1] == name, w, "the site is not passed explicitly")

    pdbs = by_kind.get("PodDisruptionBudget", [])
    mpdb = [p for p in pdbs if p["metadata"]["labels"].get("app.kubernetes.io/component") == "meta"]
    check(len(mpdb) == 1 and mpdb[0]["spec"].get("maxUnavailable") == 1, where, "voters PDB is not maxUnavailable: 1")
    spdb = {p["metadata"]["labels"].get("coffer.io/site"): p for p in pdbs if p["metadata"]["labels"].get("app.kubernetes.io/component") == "storage"}
    check(set(spdb) == set(sites), where, "not one storage PDB per site")
    for p in spdb.values():
        check(p["spec"].get("maxUnavailable") == values["storage"]["maxUnavailable"], where, "storage PDB maxUnavailable")

    certs = by_kind.get("Certificate", [])
    if values["tls"]["certManager"]["enabled"]:
        uris = sorted(u.split("/")[2] for c in certs for u in c["spec"].get("uris", []))
        check(uris == ["admin", "meta", "storage"], where, f"Certificates carry roles {uris}")
        secrets = {c["spec"]["secretName"] for c in certs}
        for s in sts:
            vol = {v["name"]: v for v in s["spec"]["template"]["spec"]["volumes"]}["tls"]["secret"]["secretName"]
            check(vol in secrets, where, f"{s['metadata']['name']} mounts {vol}, which no Certificate writes")
    else:
        check(not certs, where, "Certificates rendered without cert-manager")
        want = set(values["tls"]["existingSecrets"].values())
        for s in sts:
            vol = {v["name"]: v for v in s["spec"]["template"]["spec"]["volumes"]}["tls"]["secret"]["secretName"]
            check(vol in want, where, f"{s['metadata']['name']} mounts {vol}, not an existing Secret")
    check(bool(by_kind.get("ServiceMonitor")) == values["serviceMonitor"]["enabled"], where, "ServiceMonitor presence")


def check_configs(objs, coffer, where):
    """Loads every rendered daemon config file with the real binary."""
    cm = next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-config"))
    with tempfile.TemporaryDirectory() as d:
        for name, text in sorted(cm["data"].items()):
            path = Path(d) / name
            path.write_text(text)
            daemon = "storage" if name.startswith("storage") else "meta"
            extra = ["--site", "site-a"] if daemon == "storage" else []
            env = {k: v for k, v in os.environ.items() if not k.startswith("COFFER_")}
            r = subprocess.run(
                [coffer, daemon, "--config", str(path), "--print-config", *extra], capture_output=True, text=True, env=env
            )
            check(r.returncode == 0, f"{where} {name}", f"`coffer {daemon} --config` refused it: {r.stderr.strip()}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--venv", required=True, help="the virtualenv holding check-jsonschema and yamllint")
    ap.add_argument("--coffer", help="a coffer binary to load the rendered config files with")
    args = ap.parse_args()

    print(f"helm-check: Helm SDK {helm.helm_sdk_version()}, Kubernetes schemas {KUBE_VERSIONS[0]}..{KUBE_VERSIONS[-1]}")
    sets = sorted(VALUES.glob("*.yaml"))
    with helm.Chart.load(str(CHART)) as chart:
        for path in sets:
            where = path.name
            print(f"== {where}")
            user = load_values(path)
            merged = chart.merge_values(user)
            try:
                chart.validate_schema(user)
            except helm.HelmError as e:
                fail(where, f"Helm's schema validation: {e}")
            err = schema_errors(merged, args.venv)
            check(err is None, where, f"check-jsonschema: {err}")

            # Lint is slow (a full render each time): the oldest and newest
            # versions bound what the chart's Capabilities checks could see.
            for kv in (KUBE_VERSIONS[0], KUBE_VERSIONS[-1]):
                report = helm.lint(str(CHART), user, strict=True, namespace=NAMESPACE, kube_version=f"v{kv}")
                bad = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2] + report.get("errors", [])
                check(not bad, where, f"helm lint --strict (k8s {kv}): {bad}")

            manifests = chart.render(user, name=RELEASE, namespace=NAMESPACE, is_install=True)
            text = "".join(
                f"---\n# Source: {name}\n{body.strip()}\n" for name, body in sorted(manifests.items()) if body.strip() and not name.endswith("NOTES.txt")
            )
            yamllint(text, where, args.venv)
            objs = [o for o in yaml.safe_load_all(text) if o]
            cm_text = manifests.get("coffer/templates/configmap.yaml", "")
            checksum = hashlib.sha256(cm_text.encode()).hexdigest()
            validated = 0
            for o in objs:
                kind = (o.get("apiVersion"), o.get("kind"))
                name = f"{where} {o.get('kind')}/{o.get('metadata', {}).get('name')}"
                check(o.get("metadata", {}).get("name"), name, "no metadata.name")
                if kind in CRD_KINDS:
                    check(isinstance(o.get("spec"), dict) and o["spec"], name, "empty spec")
                    continue
                for kv in KUBE_VERSIONS:
                    try:
                        kubernetes_validate.validate(o, kv, strict=True)
                        validated += 1
                    except kubernetes_validate.ValidationError as e:
                        fail(name, f"k8s {kv}: {e.message} at {'.'.join(str(p) for p in e.path)}")
                    except kubernetes_validate.SchemaNotFoundError:
                        fail(name, f"k8s {kv}: no schema for {kind}")
            check_invariants(objs, merged, where, checksum)
            if args.coffer:
                check_configs(objs, args.coffer, where)
            kinds = {}
            for o in objs:
                kinds[o["kind"]] = kinds.get(o["kind"], 0) + 1
            print(f"  {len(objs)} objects ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))}); {validated} object-version validations")

        # Value sets that must be refused: the schema is a contract too.
        for path in sorted((VALUES / "bad").glob("*.yaml")):
            where = f"bad/{path.name}"
            merged = chart.merge_values(load_values(path))
            refused = schema_errors(merged, args.venv) is not None
            check(refused, where, "check-jsonschema accepted values it must refuse")
            print(f"== {where}: {'refused' if refused else 'ACCEPTED'}")

    if failures:
        print(f"helm-check: {len(failures)} failures")
        sys.exit(1)
    print(f"helm-check: {len(sets)} value sets rendered and valid against Kubernetes {KUBE_VERSIONS[0]}..{KUBE_VERSIONS[-1]}")


if __name__ == "__main__":
    main()
