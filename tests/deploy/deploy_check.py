"""Checks the deployment files against the real attention-server and Dockerfile.

  deploy_check.py k8s BIN_DIR DOCKERFILE RENDERED.yaml...   (kubectl kustomize output, one per overlay)
  deploy_check.py kserve BIN_DIR DOCKERFILE RENDERED.yaml... (kubectl kustomize of deploy/k8s/kserve/*)
  deploy_check.py compose BIN_DIR CONFIG.yaml               (docker-compose config output)

With TLS, tokens or metrics basic auth in the args (deploy/k8s/components/tls, tokens, mtls;
deploy/compose/docker-compose.tls.yml), also checks where those files come from.

Prints one line per check group and exits 1 on the first failure, naming the file and object.
Needs PyYAML (Debian: python3-yaml).
"""
import copy
import hashlib
import os
import re
import subprocess
import sys

import yaml


class CheckError(Exception):
    pass


def check(cond, message):
    if not cond:
        raise CheckError(message)


# --- attention-server's flags -------------------------------------------------------------------

def server_flags(bin_dir):
    """{flag name: default text} from `attention-server --helpfull` (absl exits 1 after it)."""
    exe = os.path.join(bin_dir, "attention-server")
    check(os.access(exe, os.X_OK), f"{exe}: not an executable (build the host binaries first)")
    out = subprocess.run([exe, "--helpfull"], capture_output=True, text=True, timeout=60)
    text = out.stdout + out.stderr
    flags = {}
    # Each flag: "    --name (help...); default: VALUE;" possibly wrapped over several lines.
    for m in re.finditer(r"^\s{4}--([A-Za-z0-9_]+) \((.*?)\);\s+default: (.*?);$", text,
                         re.M | re.S):
        default = m.group(3).strip()
        if default.startswith('"') and default.endswith('"'):
            default = default[1:-1]
        flags[m.group(1)] = default
    for required in ("listen", "metrics_listen", "model_repository", "threads", "shutdown_grace"):
        check(required in flags, f"attention-server --helpfull lists no --{required}")
    return flags


def parse_server_args(args, flags, where):
    """Validates ["--flag=value", ...] and returns {flag: value} over the defaults."""
    values = dict(flags)
    for arg in args:
        arg = str(arg)
        check(arg.startswith("--"), f"{where}: argument '{arg}' is not a --flag")
        name, eq, value = arg[2:].partition("=")
        check(name in flags, f"{where}: --{name} is not a flag of attention-server "
                             f"(attention-server --helpfull)")
        check(eq == "=" or flags[name] in ("true", "false"),
              f"{where}: write --{name}=VALUE as one argument")
        values[name] = value if eq else "true"
    return values


def port_of(host_port, what):
    m = re.fullmatch(r".*:(\d+)", host_port or "")
    check(m is not None, f"{what}: '{host_port}' has no :PORT")
    return int(m.group(1))


def duration_seconds(text, what):
    """absl::Duration text ('30s', '1m30s', '500ms', 'inf' rejected) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|ns|m|s)", text)
    check(parts and "".join(a + b for a, b in parts) == text, f"{what}: cannot parse '{text}'")
    return sum(float(n) * units[u] for n, u in parts)


def cpu_cores(quantity, what):
    q = str(quantity)
    if q.endswith("m"):
        return int(q[:-1]) / 1000
    try:
        return float(q)
    except ValueError:
        raise CheckError(f"{what}: cannot parse cpu quantity '{q}'")


def dockerfile_user(dockerfile):
    users = [line.split()[1] for line in open(dockerfile) if re.match(r"USER\s", line)]
    check(users, f"{dockerfile}: no USER")
    uid, _, gid = users[-1].partition(":")
    check(uid.isdigit(), f"{dockerfile}: USER {users[-1]} is not numeric (runAsNonRoot needs a UID)")
    return int(uid), int(gid) if gid.isdigit() else None


# --- Kubernetes -----------------------------------------------------------------------------------

def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_grpc_probes(c, port, cw):
    """Startup, readiness and liveness are native gRPC health probes of the whole server on port."""
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        p = c.get(probe)
        check(p is not None, f"{cw}: no {probe}")
        g = p.get("grpc")
        check(g is not None, f"{cw}: {probe} is not a grpc probe")
        check(g.get("port") == port, f"{cw}: {probe} port {g.get('port')}, health is on {port}")
        check(g.get("service", "") == "", f"{cw}: {probe} checks service '{g.get('service')}', not the server")


def pre_stop_pause(c, cw):
    """Seconds the container's preStop hook sleeps (it must have one)."""
    pre_stop = c.get("lifecycle", {}).get("preStop")
    check(pre_stop is not None, f"{cw}: no preStop hook (endpoints need a moment to update)")
    cmd = pre_stop.get("exec", {}).get("command", [])
    if cmd and os.path.basename(cmd[0]) == "sleep":
        return float(cmd[1])
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    return 0


def check_cpu_is_threads(c, threads, cw):
    """The CPU request and limit are --threads whole cores; memory is requested and limited."""
    res = c.get("resources", {})
    check(threads > 0, f"{cw}: --threads must be set (0 means one per node core, not per pod)")
    for kind in ("requests", "limits"):
        cpu = res.get(kind, {}).get("cpu")
        check(cpu is not None, f"{cw}: no cpu {kind}")
        check(cpu_cores(cpu, cw) == threads, f"{cw}: cpu {kind} {cpu} != --threads={threads}")
        check("memory" in res.get(kind, {}), f"{cw}: no memory {kind}")


def check_restricted(psc, csc, uid, where, cw):
    """The restricted Pod Security Standard, from the pod (psc) and container (csc) contexts."""
    either = lambda key: csc.get(key, psc.get(key))
    check(either("runAsNonRoot") is True, f"{where}: runAsNonRoot is not true")
    run_as = either("runAsUser")
    check(run_as in (None, uid), f"{where}: runAsUser {run_as}, the image's USER is {uid}")
    check((either("seccompProfile") or {}).get("type") == "RuntimeDefault",
          f"{where}: seccompProfile is not RuntimeDefault")
    check(csc.get("readOnlyRootFilesystem") is True, f"{cw}: readOnlyRootFilesystem is not true")
    check(csc.get("allowPrivilegeEscalation") is False, f"{cw}: allowPrivilegeEscalation is not false")
    check(not csc.get("privileged", False), f"{cw}: privileged")
    check("ALL" in csc.get("capabilities", {}).get("drop", []), f"{cw}: capabilities do not drop ALL")


def check_k8s(path, flags, uid, gid, seen):
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    path = os.path.basename(path)  # messages name the overlay
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    name = lambda d: f"{path}: {d['kind']}/{d['metadata']['name']}"

    namespaces = {d["metadata"].get("namespace") for d in docs
                  if d["kind"] not in ("Namespace",)}
    check(len(namespaces) == 1, f"{path}: objects in several namespaces: {namespaces}")

    deployments = by_kind.get("Deployment", [])
    check(len(deployments) == 1, f"{path}: expected one Deployment, got {len(deployments)}")
    dep = deployments[0]
    where = name(dep)
    pod = dep["spec"]["template"]
    pod_labels = pod["metadata"].get("labels", {})
    check(selects(dep["spec"]["selector"]["matchLabels"], pod_labels),
          f"{where}: selector does not match the pod template's labels")
    spec = pod["spec"]
    containers = [c for c in spec["containers"] if c["name"] == "attention-server"]
    check(len(containers) == 1, f"{where}: no container named attention-server")
    c = containers[0]
    cw = f"{where} container attention-server"

    # Flags.
    values = parse_server_args(c.get("args", []), flags, f"{cw} args")
    check("command" not in c, f"{cw}: sets command, bypassing the image's entrypoint")
    grpc_port = port_of(values["listen"], f"{cw} --listen")
    metrics_on = values["metrics_listen"] != ""
    threads = int(values["threads"])
    grace = duration_seconds(values["shutdown_grace"], f"{cw} --shutdown_grace")
    print(f"  {where}: {len(c.get('args', []))} args, all real flags; grpc {grpc_port}, "
          f"threads {threads}, shutdown_grace {grace:g}s")

    # Ports.
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    for p in c.get("ports", []):
        extra = set(p) - {"name", "containerPort", "protocol", "hostPort", "hostIP"}
        check(not extra, f"{cw}: container port fields {sorted(extra)} do not exist (appProtocol is a Service field)")
    check(ports.get("grpc") == grpc_port,
          f"{cw}: port 'grpc' is {ports.get('grpc')}, --listen says {grpc_port}")
    if metrics_on:
        metrics_port = port_of(values["metrics_listen"], f"{cw} --metrics_listen")
        check(ports.get("metrics") == metrics_port,
              f"{cw}: port 'metrics' is {ports.get('metrics')}, --metrics_listen says {metrics_port}")

    # Probes: native gRPC health, whole server; on the gRPC port, or on the plaintext health
    # port when TLS or tokens are on (the kubelet's gRPC probes can do neither).
    security = {f: values[f] for f in SECURITY_FLAGS if values.get(f) not in (None, "", "false")}
    probe_port = grpc_port
    if security.get("tls_cert_file") or security.get("auth_health"):
        check(security.get("health_listen"),
              f"{cw}: TLS or --auth_health without --health_listen: the kubelet's gRPC probes "
              f"(no TLS, no token) would fail")
    if security.get("health_listen"):
        probe_port = port_of(security["health_listen"], f"{cw} --health_listen")
        check(ports.get("health") == probe_port,
              f"{cw}: port 'health' is {ports.get('health')}, --health_listen says {probe_port}")
    check_grpc_probes(c, probe_port, cw)
    if path == "base.yaml":
        check(not security, f"{cw}: base sets {sorted(security)}; security belongs in components/tls-auth")

    # Shutdown: preStop pause + --shutdown_grace must fit in the grace period.
    pause = pre_stop_pause(c, cw)
    tgps = spec.get("terminationGracePeriodSeconds", 30)
    check(tgps > grace + pause,
          f"{where}: terminationGracePeriodSeconds {tgps} <= preStop {pause:g}s + --shutdown_grace {grace:g}s")
    print(f"  {where}: terminationGracePeriodSeconds {tgps} > preStop {pause:g}s + shutdown_grace {grace:g}s")

    # Resources: the CPU request and limit are --threads whole cores.
    check_cpu_is_threads(c, threads, cw)

    # Security.
    check_restricted(spec.get("securityContext", {}), c.get("securityContext", {}), uid, where, cw)
    print(f"  {where}: runAsNonRoot, uid {uid}, seccomp RuntimeDefault, read-only root, drop ALL")

    # Volumes: models and the repository flag.
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    for m in mounts.values():
        check(m["name"] in volumes, f"{cw}: mount {m['mountPath']} names no volume '{m['name']}'")
    check("/models" in mounts, f"{cw}: nothing mounted at /models")
    if values["model_repository"]:
        check(any(values["model_repository"].rstrip("/") == p.rstrip("/") or
                  values["model_repository"].startswith(p.rstrip("/") + "/") for p in mounts),
              f"{cw}: --model_repository={values['model_repository']} is not on a mounted volume")
    check("/tmp" in mounts, f"{cw}: read-only root but no writable /tmp")
    check_security_files(path, cw, security, mounts, volumes, by_kind, grpc_port, probe_port, seen)
    models = volumes[mounts["/models"]["name"]]
    print(f"  {where}: /models from {sorted(k for k in models if k != 'name')[0]}, "
          f"--model_repository='{values['model_repository']}'")

    # Services.
    services = by_kind.get("Service", [])
    for s in services:
        check(selects(s["spec"].get("selector"), pod_labels),
              f"{name(s)}: selector does not match the pods")
        for p in s["spec"]["ports"]:
            tp = p.get("targetPort", p["port"])
            check(tp in ports or tp in ports.values(),
                  f"{name(s)}: targetPort {tp} is no port of the container")
    target = lambda p: ports.get(p.get("targetPort"), p.get("targetPort", p["port"]))
    headless = [s for s in services if s["spec"].get("clusterIP") == "None"
                and any(target(p) == grpc_port for p in s["spec"]["ports"])]
    check(headless, f"{path}: no headless Service (clusterIP: None) for the gRPC port")
    metrics_services = []
    if metrics_on:
        metrics_services = [s for s in services if s["spec"].get("clusterIP") != "None"
                            and any(target(p) == metrics_port for p in s["spec"]["ports"])]
        check(metrics_services, f"{path}: no ClusterIP Service for the metrics port")
    print(f"  {path}: headless {headless[0]['metadata']['name']}, "
          f"metrics {metrics_services[0]['metadata']['name'] if metrics_services else '-'}")

    # HPA.
    hpas = by_kind.get("HorizontalPodAutoscaler", [])
    check(len(hpas) == 1, f"{path}: expected one HorizontalPodAutoscaler")
    hpa = hpas[0]
    check(hpa["apiVersion"] == "autoscaling/v2", f"{name(hpa)}: not autoscaling/v2")
    ref = hpa["spec"]["scaleTargetRef"]
    check(ref["kind"] == "Deployment" and ref["name"] == dep["metadata"]["name"],
          f"{name(hpa)}: scales {ref['kind']}/{ref['name']}, not the Deployment")
    metric_names = []
    for m in hpa["spec"]["metrics"]:
        if m["type"] == "Resource":
            metric_names.append(m["resource"]["name"])
        elif m["type"] == "Pods":
            metric_names.append(m["pods"]["metric"]["name"])
    check("cpu" in metric_names, f"{name(hpa)}: no cpu metric")
    check(1 <= hpa["spec"].get("minReplicas", 1) <= hpa["spec"]["maxReplicas"],
          f"{name(hpa)}: bad replica bounds")
    if "attn_queue_depth" in metric_names:
        seen.add("queue_depth_hpa")
    print(f"  {name(hpa)}: metrics {metric_names}")

    # PodDisruptionBudget.
    pdbs = by_kind.get("PodDisruptionBudget", [])
    check(len(pdbs) == 1, f"{path}: expected one PodDisruptionBudget")
    check(selects(pdbs[0]["spec"]["selector"]["matchLabels"], pod_labels),
          f"{name(pdbs[0])}: selector does not match the pods")

    # ServiceMonitor (overlays with the Prometheus Operator).
    for sm in by_kind.get("ServiceMonitor", []):
        check(sm["apiVersion"] == "monitoring.coreos.com/v1", f"{name(sm)}: not monitoring.coreos.com/v1")
        matched = [s for s in services if selects(sm["spec"]["selector"].get("matchLabels"),
                                                  s["metadata"].get("labels", {}))]
        check(matched, f"{name(sm)}: selects no Service")
        for ep in sm["spec"]["endpoints"]:
            if security.get("metrics_auth_file"):
                ba = ep.get("basicAuth") or {}
                secrets = rendered_secrets(by_kind)
                for part in ("username", "password"):
                    ref = ba.get(part) or {}
                    check(ref.get("key") in secrets.get(ref.get("name"), ()),
                          f"{name(sm)}: /metrics needs basic auth (--metrics_auth_file) but basicAuth."
                          f"{part} names no rendered Secret key ({ref})")
            for s in matched:
                names = {p.get("name"): p for p in s["spec"]["ports"]}
                check(ep.get("port") in names, f"{name(sm)}: {name(s)} has no port '{ep.get('port')}'")
                check(target(names[ep["port"]]) == metrics_port,
                      f"{name(sm)}: port '{ep['port']}' is not the metrics port")
            check(ep.get("path", "/metrics") == "/metrics", f"{name(sm)}: path is not /metrics")
        seen.add("servicemonitor")
        print(f"  {name(sm)}: scrapes {[s['metadata']['name'] for s in matched]}")

    # Session affinity (Istio): a consistent hash on x-session-id over a Service with one
    # virtual IP (the mesh cannot hash over a headless Service) that selects the pods on the
    # gRPC port.
    for dr in by_kind.get("DestinationRule", []):
        check(dr["apiVersion"].startswith("networking.istio.io/"), f"{name(dr)}: not networking.istio.io")
        host = dr["spec"]["host"].split(".")[0]
        hosts = [s for s in services if s["metadata"]["name"] == host]
        check(hosts, f"{name(dr)}: host {host} is no Service of this render")
        svc = hosts[0]
        check(svc["spec"].get("clusterIP") != "None", f"{name(dr)}: {name(svc)} is headless")
        check(selects(svc["spec"]["selector"], pod_labels), f"{name(svc)}: selects no pod")
        check(any(target(p) == grpc_port or target(p) == "grpc" for p in svc["spec"]["ports"]),
              f"{name(svc)}: no port to the gRPC port {grpc_port}")
        lb = dr["spec"]["trafficPolicy"]["loadBalancer"]["consistentHash"]
        check(lb.get("httpHeaderName") == "x-session-id",
              f"{name(dr)}: hashes {lb}, not the x-session-id header")
        seen.add("session_affinity")
        print(f"  {name(dr)}: consistent hash on x-session-id over {name(svc)}")


# --- TLS, tokens, metrics basic auth (components/tls-auth, components/mtls) --------------------

SECURITY_FLAGS = ("tls_cert_file", "tls_key_file", "tls_client_ca_file", "auth_tokens_file",
                  "metrics_auth_file", "health_listen", "auth_health")
SECURITY_FILE_FLAGS = ("tls_cert_file", "tls_key_file", "tls_client_ca_file", "auth_tokens_file",
                       "metrics_auth_file")
CERT_MANAGER_KEYS = ("tls.crt", "tls.key", "ca.crt")  # what cert-manager writes into secretName


def rendered_secrets(by_kind):
    """{Secret name: its keys} of the render."""
    return {s["metadata"]["name"]: set(s.get("data") or {}) | set(s.get("stringData") or {})
            for s in by_kind.get("Secret", [])}


def secret_file(flag, file, mounts, volumes, cw):
    """(Secret name, key) behind a file the server reads, through a read-only whole-volume
    mount of a secret or projected volume (a subPath mount would never see an update)."""
    mount = None
    for m in mounts.values():
        if file.startswith(m["mountPath"].rstrip("/") + "/"):
            mount = m
    check(mount is not None, f"{cw}: --{flag}={file} is on no mounted volume")
    check(mount.get("readOnly") is True, f"{cw}: {mount['mountPath']} (--{flag}) is not readOnly")
    check("subPath" not in mount and "subPathExpr" not in mount,
          f"{cw}: {mount['mountPath']} (--{flag}) uses subPath, which the kubelet never updates: "
          f"rotation would need a restart")
    rel = file[len(mount["mountPath"].rstrip("/")) + 1:]
    vol = volumes[mount["name"]]
    if "secret" in vol:
        sources = [vol["secret"]]
        sources[0] = dict(sources[0], name=sources[0].get("secretName"))
    elif "projected" in vol:
        sources = [s["secret"] for s in vol["projected"]["sources"] if "secret" in s]
    else:
        raise CheckError(f"{cw}: --{flag}={file} is on volume '{mount['name']}', not a Secret")
    for src in sources:
        items = src.get("items")
        if items is None:
            return src["name"], rel, vol
        for item in items:
            if item["path"] == rel:
                return src["name"], item["key"], vol
    raise CheckError(f"{cw}: --{flag}={file}: no key of volume '{mount['name']}' lands at {rel}")


def check_security_files(path, cw, security, mounts, volumes, by_kind, grpc_port, probe_port, seen):
    if not security:
        for v in volumes.values():
            check("secret" not in v and "projected" not in v,
                  f"{cw}: volume {v['name']} mounts a Secret without any security flag using it")
        return
    secrets = rendered_secrets(by_kind)
    certificates = {c["spec"]["secretName"]: c for c in by_kind.get("Certificate", [])}
    namespace = {d["metadata"].get("namespace") for ds in by_kind.values() for d in ds
                 if d["kind"] != "Namespace"}.pop() or "default"
    for flag in SECURITY_FILE_FLAGS:
        if not security.get(flag):
            continue
        secret, key, vol = secret_file(flag, security[flag], mounts, volumes, cw)
        mode = (vol.get("secret") or vol.get("projected") or {}).get("defaultMode", 0o644)
        check(mode & 0o044, f"{cw}: volume {vol['name']} mode {mode:o}: neither group (fsGroup) "
                            f"nor others may read --{flag}")
        if secret in certificates:
            check(key in CERT_MANAGER_KEYS, f"{cw}: --{flag}: cert-manager writes no key '{key}' "
                                             f"into {secret} (only {CERT_MANAGER_KEYS})")
            origin = f"Certificate/{certificates[secret]['metadata']['name']}"
        else:
            check(secret in secrets, f"{cw}: --{flag}: Secret {secret} is neither rendered nor "
                                     f"issued by a cert-manager Certificate")
            check(key in secrets[secret], f"{cw}: --{flag}: Secret {secret} has no key '{key}'")
            origin = "rendered"
        print(f"  {cw}: --{flag}={security[flag]} <- Secret {secret} key {key} ({origin}), read-only")
    check(bool(security.get("tls_cert_file")) == bool(security.get("tls_key_file")),
          f"{cw}: --tls_cert_file and --tls_key_file go together")
    check(not security.get("tls_client_ca_file") or security.get("tls_cert_file"),
          f"{cw}: --tls_client_ca_file without --tls_cert_file")
    if security.get("health_listen"):
        check(probe_port != grpc_port, f"{cw}: the probes must use the plaintext health port")
        for s in by_kind.get("Service", []):
            for p in s["spec"]["ports"]:
                check(p.get("targetPort") not in ("health", probe_port),
                      f"{path}: Service/{s['metadata']['name']} exposes the plaintext health port")
        print(f"  {cw}: probes on the plaintext health port {probe_port}, which no Service exposes")
    else:
        print(f"  {cw}: no TLS: probes on the gRPC port {probe_port}, health open (no --auth_health)")
    if security.get("tls_cert_file"):
        secret = secret_file("tls_cert_file", security["tls_cert_file"], mounts, volumes, cw)[0]
        cert = certificates.get(secret)
        check(cert is not None, f"{path}: no cert-manager Certificate issues Secret {secret}")
        where = f"{path}: Certificate/{cert['metadata']['name']}"
        check(cert["apiVersion"] == "cert-manager.io/v1", f"{where}: not cert-manager.io/v1")
        ref = cert["spec"].get("issuerRef") or {}
        check(ref.get("name") and ref.get("kind") in ("Issuer", "ClusterIssuer")
              and ref.get("group", "cert-manager.io") == "cert-manager.io",
              f"{where}: issuerRef {ref} is not a cert-manager Issuer or ClusterIssuer")
        dns = cert["spec"].get("dnsNames") or []
        for s in by_kind.get("Service", []):
            if s["spec"].get("clusterIP") == "None":
                n = s["metadata"]["name"]
                for want in (n, f"{n}.{namespace}.svc", f"{n}.{namespace}.svc.cluster.local"):
                    check(want in dns, f"{where}: dnsNames {dns} lack {want} (Service {n})")
        usages = cert["spec"].get("usages")
        check(usages is None or "server auth" in usages, f"{where}: usages {usages} lack 'server auth'")
        print(f"  {where}: secretName {secret}, issuer {ref['kind']}/{ref['name']}, dnsNames {dns}")
        seen.add("tls")
    if security.get("tls_client_ca_file"):
        seen.add("mtls")
    if security.get("auth_tokens_file"):
        seen.add("tokens")
    if security.get("metrics_auth_file"):
        seen.add("metrics_auth")
    if security.get("auth_tokens_file") and not security.get("tls_cert_file"):
        seen.add("tokens_only")


def strip_security(dep):
    """The Deployment with everything components/tls-auth and components/mtls add taken out."""
    dep = copy.deepcopy(dep)
    spec = dep["spec"]["template"]["spec"]
    c = [c for c in spec["containers"] if c["name"] == "attention-server"][0]
    c["args"] = [a for a in c["args"] if a[2:].partition("=")[0] not in SECURITY_FLAGS]
    c["ports"] = [p for p in c["ports"] if p.get("name") != "health"]
    grpc = [p["containerPort"] for p in c["ports"] if p.get("name") == "grpc"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        c[probe]["grpc"]["port"] = grpc
    secret_vols = {v["name"] for v in spec["volumes"] if "secret" in v or "projected" in v}
    spec["volumes"] = [v for v in spec["volumes"] if v["name"] not in secret_vols]
    c["volumeMounts"] = [m for m in c["volumeMounts"] if m["name"] not in secret_vols]
    return dep


def check_component_adds_only_security(plain_path, secure_path):
    """The secure overlay's Deployment is the plain one's plus the security wiring, nothing else."""
    load = lambda p: [d for d in yaml.safe_load_all(open(p)) if d and d["kind"] == "Deployment"][0]
    plain, secure = load(plain_path), load(secure_path)
    check(strip_security(secure) == plain,
          f"{os.path.basename(secure_path)}: the Deployment differs from "
          f"{os.path.basename(plain_path)}'s by more than the TLS/token/health wiring")
    check(strip_security(plain) == plain, f"{os.path.basename(plain_path)}: has security wiring")
    print(f"  {os.path.basename(secure_path)}: Deployment = {os.path.basename(plain_path)}'s "
          f"+ only the TLS/token/metrics-auth/health wiring")


# --- KServe (deploy/k8s/kserve) ------------------------------------------------------------------

KSERVE_API = {"ServingRuntime": "serving.kserve.io/v1alpha1",
              "ClusterServingRuntime": "serving.kserve.io/v1alpha1",
              "InferenceService": "serving.kserve.io/v1beta1",
              "PersistentVolumeClaim": "v1", "ServiceAccount": "v1"}
KSERVE_MODEL_DIR = "/mnt/models"   # where KServe puts the storageUri's contents
KSERVE_CONTAINER = "kserve-container"  # the container KServe merges spec.predictor.model into


def check_kserve_runtime(rt, flags, uid, where):
    """A (Cluster)ServingRuntime of attention-server; returns what InferenceServices need of it."""
    spec = rt["spec"]
    protocols = spec.get("protocolVersions") or []
    check("grpc-v2" in protocols, f"{where}: protocolVersions {protocols} lack grpc-v2")
    formats = spec.get("supportedModelFormats") or []
    check(formats and all(f.get("name") for f in formats), f"{where}: no supportedModelFormats")
    containers = [c for c in spec.get("containers", []) if c.get("name") == KSERVE_CONTAINER]
    check(len(containers) == 1, f"{where}: no container named {KSERVE_CONTAINER}")
    c = containers[0]
    cw = f"{where} container {KSERVE_CONTAINER}"
    check("command" not in c, f"{cw}: sets command, bypassing the image's entrypoint")
    values = parse_server_args(c.get("args", []), flags, f"{cw} args")
    check(values["model_repository"].rstrip("/") == KSERVE_MODEL_DIR,
          f"{cw}: --model_repository='{values['model_repository']}', KServe mounts the model at "
          f"{KSERVE_MODEL_DIR}")
    grpc_port = port_of(values["listen"], f"{cw} --listen")
    ports = c.get("ports") or []
    check(ports, f"{cw}: no container port (KServe's Service forwards to the first one)")
    first = ports[0]
    check(first.get("containerPort") == grpc_port,
          f"{cw}: first port {first.get('containerPort')} is KServe's Service target, --listen says {grpc_port}")
    check("h2c" in first.get("name", "") or "grpc" in first.get("name", ""),
          f"{cw}: first port is named '{first.get('name')}': KServe marks a port HTTP/2 (h2c) only "
          f"when its name contains h2c or grpc")
    check_grpc_probes(c, grpc_port, cw)
    check_cpu_is_threads(c, int(values["threads"]), cw)
    check_restricted({}, c.get("securityContext", {}), uid, cw, cw)
    check(c["securityContext"].get("runAsUser") == uid,
          f"{cw}: runAsUser is not the image's USER {uid} (a ServingRuntime has no pod securityContext)")
    volumes = {v["name"] for v in spec.get("volumes", [])}
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    check(mounts.get("/tmp") in volumes, f"{cw}: read-only root but no writable /tmp volume")
    check(KSERVE_MODEL_DIR not in mounts, f"{cw}: mounts over {KSERVE_MODEL_DIR}, KServe's model mount")

    # Metrics: the container port and the annotations KServe copies onto the pods.
    metrics_port = port_of(values["metrics_listen"], f"{cw} --metrics_listen")
    check(metrics_port in [p.get("containerPort") for p in ports],
          f"{cw}: no container port {metrics_port} (--metrics_listen)")
    ann = spec.get("annotations") or {}
    for key, want in (("prometheus.kserve.io/port", str(metrics_port)),
                      ("prometheus.kserve.io/path", "/metrics"),
                      ("prometheus.io/port", str(metrics_port)),
                      ("prometheus.io/path", "/metrics"),
                      ("prometheus.io/scrape", "true")):
        check(str(ann.get(key)) == want, f"{where}: spec.annotations {key} is {ann.get(key)!r}, want {want!r}")
    check(ann.get("serving.kserve.io/enable-prometheus-scraping") == "false",
          f"{where}: serving.kserve.io/enable-prometheus-scraping must be \"false\": \"true\" (or the "
          f"cluster default) makes KServe's webhook set prometheus.io/port to Knative's 9091")
    grace = duration_seconds(values["shutdown_grace"], f"{cw} --shutdown_grace")
    print(f"  {where}: {len(c.get('args', []))} args, all real flags; {first['name']} {grpc_port} "
          f"(first port, probes), metrics {metrics_port} (annotations), --model_repository="
          f"{KSERVE_MODEL_DIR}, protocols {protocols}, restricted")
    return {"formats": formats, "protocols": protocols, "grace": grace + pre_stop_pause(c, cw),
            "uid": uid}


def format_supported(want, formats):
    """KServe's rule: the name, and the version when the InferenceService gives one."""
    return any(f["name"] == want.get("name") and
               ("version" not in want or str(f.get("version")) == str(want["version"]))
               for f in formats)


def check_kserve_isvc(isvc, runtimes, by_kind, where, seen):
    pred = isvc["spec"]["predictor"]
    model = pred.get("model")
    check(model, f"{where}: no spec.predictor.model")
    name = model.get("runtime")
    check(name in runtimes, f"{where}: runtime {name!r} is no (Cluster)ServingRuntime of the render "
                            f"({sorted(runtimes)})")
    rt = runtimes[name]
    fmt = model.get("modelFormat") or {}
    check(format_supported(fmt, rt["formats"]),
          f"{where}: modelFormat {fmt} is not one of the runtime's {rt['formats']}")
    proto = model.get("protocolVersion")
    check(proto == "grpc-v2" and proto in rt["protocols"],
          f"{where}: protocolVersion {proto!r}, want grpc-v2 (runtime: {rt['protocols']})")
    mode = (isvc["metadata"].get("annotations") or {}).get("serving.kserve.io/deploymentMode")
    check(mode in ("RawDeployment", "Standard"),
          f"{where}: deploymentMode {mode!r}: the runtime has two ports and gRPC probes, which "
          f"Knative (KServe's default Serverless mode) refuses")
    tgps = pred.get("terminationGracePeriodSeconds", 30)
    check(tgps > rt["grace"], f"{where}: terminationGracePeriodSeconds {tgps} <= preStop + "
                              f"--shutdown_grace ({rt['grace']:g}s)")
    psc = pred.get("securityContext") or {}
    check(psc.get("runAsNonRoot", True) is True and psc.get("runAsUser", rt["uid"]) == rt["uid"] and
          (psc.get("seccompProfile") or {"type": "RuntimeDefault"}).get("type") == "RuntimeDefault",
          f"{where}: predictor securityContext {psc} loosens the runtime's restricted one")
    uri = model.get("storageUri", "")
    scheme = uri.partition("://")[0]
    check(scheme in ("pvc", "s3", "gs"), f"{where}: storageUri {uri!r} is not pvc://, s3:// or gs://")
    if scheme == "pvc":
        claim = uri[len("pvc://"):].partition("/")[0]
        claims = [p["metadata"]["name"] for p in by_kind.get("PersistentVolumeClaim", [])]
        check(claim in claims, f"{where}: storageUri claim {claim!r} is no PersistentVolumeClaim of the "
                               f"render ({claims})")
    else:
        sa = pred.get("serviceAccountName")
        accounts = {a["metadata"]["name"]: a for a in by_kind.get("ServiceAccount", [])}
        check(sa in accounts, f"{where}: {scheme}:// needs credentials: serviceAccountName {sa!r} is "
                              f"no ServiceAccount of the render")
    seen.add(f"isvc_{scheme}")
    print(f"  {where}: runtime {name}, modelFormat {fmt.get('name')}, {proto}, {mode}, {uri}, "
          f"grace {tgps}s")


def check_kserve(path, flags, uid, seen):
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    path = os.path.basename(path)
    by_kind = {}
    for d in docs:
        where = f"{path}: {d.get('kind')}/{d['metadata']['name']}"
        check(d.get("kind") in KSERVE_API, f"{where}: unexpected kind")
        check(d["apiVersion"] == KSERVE_API[d["kind"]],
              f"{where}: apiVersion {d['apiVersion']}, want {KSERVE_API[d['kind']]}")
        by_kind.setdefault(d["kind"], []).append(d)
    runtimes = {}
    for kind in ("ServingRuntime", "ClusterServingRuntime"):
        for rt in by_kind.get(kind, []):
            runtimes[rt["metadata"]["name"]] = check_kserve_runtime(
                rt, flags, uid, f"{path}: {kind}/{rt['metadata']['name']}")
            check(kind == "ServingRuntime" or "namespace" not in rt["metadata"],
                  f"{path}: ClusterServingRuntime with a namespace")
            seen.add(kind)
    for isvc in by_kind.get("InferenceService", []):
        check_kserve_isvc(isvc, runtimes, by_kind, f"{path}: InferenceService/{isvc['metadata']['name']}", seen)


# --- docker-compose ------------------------------------------------------------------------------

def check_compose(path, flags):
    config = yaml.safe_load(open(path))
    services = config.get("services", {})
    for svc_name in ("attention-server", "prometheus", "grafana"):
        check(svc_name in services, f"{path}: no service {svc_name}")
    binds = 0
    for svc_name, svc in services.items():
        for v in svc.get("volumes", []):
            if isinstance(v, dict):
                source, target, kind = v.get("source", ""), v.get("target", ""), v.get("type")
            else:
                parts = v.split(":")
                source, target = parts[0], parts[1] if len(parts) > 1 else parts[0]
                kind = "bind" if source.startswith(("/", ".", "~")) else "volume"
            if kind != "bind":
                continue
            binds += 1
            check(os.path.exists(source), f"{path}: {svc_name} mounts {source}, which does not exist")
            # A target with a file extension is a file (a missing source would become a directory).
            if re.search(r"\.[a-z]+$", os.path.basename(target)):
                check(os.path.isfile(source), f"{path}: {svc_name}: {source} is not a file for {target}")
            else:
                check(os.path.isdir(source), f"{path}: {svc_name}: {source} is not a directory for {target}")
            print(f"  {svc_name}: {source} -> {target}")
        build = svc.get("build")
        if build:
            context = build if isinstance(build, str) else build["context"]
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            check(os.path.isdir(context), f"{path}: {svc_name} build context {context} does not exist")
            check(os.path.isfile(os.path.join(context, dockerfile)),
                  f"{path}: {svc_name}: no {dockerfile} in {context}")
            print(f"  {svc_name}: builds {os.path.join(context, dockerfile)}")
    check(binds > 0, f"{path}: no bind mounts found (config output not understood?)")

    server = services["attention-server"]
    where = f"{path}: attention-server"
    command = server.get("command", [])
    if isinstance(command, str):
        command = command.split()
    values = parse_server_args(command, flags, f"{where} command")
    grpc_port = port_of(values["listen"], f"{where} --listen")
    metrics_port = port_of(values["metrics_listen"], f"{where} --metrics_listen")
    targets = set()
    for p in server.get("ports", []):
        targets.add(int(p["target"]) if isinstance(p, dict) else int(str(p).split(":")[-1].split("/")[0]))
    check(grpc_port in targets, f"{where}: gRPC port {grpc_port} not published")
    check(metrics_port in targets, f"{where}: metrics port {metrics_port} not published")
    grace = duration_seconds(values["shutdown_grace"], f"{where} --shutdown_grace")
    stop = duration_seconds(str(server.get("stop_grace_period", "10s")), f"{where} stop_grace_period")
    check(stop > grace, f"{where}: stop_grace_period {stop:g}s <= --shutdown_grace {grace:g}s")
    if "cpus" in server and int(values["threads"]) > 0:
        check(float(server["cpus"]) == int(values["threads"]),
              f"{where}: cpus {server['cpus']} != --threads={values['threads']}")
    print(f"  attention-server: {len(command)} args, all real flags; ports {grpc_port}, {metrics_port} "
          f"published; stop_grace_period {stop:g}s > shutdown_grace {grace:g}s")

    # Prometheus: its mounted config scrapes the server's metrics port by service name and loads
    # rule files that are mounted too.
    prom = services["prometheus"]
    mounts = {}
    for v in prom.get("volumes", []):
        source, target = ((v["source"], v["target"]) if isinstance(v, dict) else v.split(":")[:2])
        mounts[target] = source
    config_file = "/etc/prometheus/prometheus.yml"
    for arg in prom.get("command", []) or []:
        if str(arg).startswith("--config.file="):
            config_file = str(arg).split("=", 1)[1]
    check(config_file in mounts, f"{path}: prometheus config {config_file} is not mounted")
    prom_config = yaml.safe_load(open(mounts[config_file])) or {}
    targets = [t for job in prom_config.get("scrape_configs") or []
               for sc in job.get("static_configs") or [] for t in sc.get("targets") or []]
    want = f"attention-server:{metrics_port}"
    check(want in targets, f"{mounts[config_file]}: no scrape target {want} (got {targets})")
    rules = prom_config.get("rule_files") or []
    check(rules, f"{mounts[config_file]}: no rule_files")
    for rule in rules:
        in_container = os.path.normpath(os.path.join(os.path.dirname(config_file), rule))
        check(in_container in mounts, f"{mounts[config_file]}: rule file {rule} ({in_container}) is not mounted")
    print(f"  prometheus: scrapes {want}, rule files {rules} mounted")
    check_compose_security(path, config, values, prom_config, mounts[config_file], want)


def compose_secret_file(config, svc_name, container_path, where):
    """The host file of the compose secret a service reads at container_path."""
    svc = config["services"][svc_name]
    listed = {}
    for sec in svc.get("secrets") or []:
        src = sec if isinstance(sec, str) else sec["source"]
        tgt = src if isinstance(sec, str) else sec.get("target", src)
        listed[tgt if tgt.startswith("/") else "/run/secrets/" + tgt] = src
    check(container_path in listed, f"{where}: {container_path} is no secret of {svc_name} "
                                    f"(its secrets: {sorted(listed)})")
    top = (config.get("secrets") or {}).get(listed[container_path]) or {}
    host = top.get("file")
    check(host, f"{where}: secret {listed[container_path]} has no file")
    check(os.path.isfile(host), f"{where}: secret {listed[container_path]}: {host} is not a file")
    return host


def check_compose_security(path, config, values, prom_config, prom_config_file, want):
    security = {f: values[f] for f in SECURITY_FLAGS if values.get(f) not in (None, "", "false")}
    if not security:
        return
    server = config["services"]["attention-server"]
    where = f"{path}: attention-server"
    hosts = {}
    for flag in SECURITY_FILE_FLAGS:
        if security.get(flag):
            hosts[flag] = compose_secret_file(config, "attention-server", security[flag],
                                              f"{where} --{flag}")
            print(f"  attention-server: --{flag}={security[flag]} <- secret file {hosts[flag]}")
    check(not (server.get("volumes") and any(
        (v.get("target") if isinstance(v, dict) else v.split(":")[1]).startswith("/run/secrets")
        for v in server["volumes"])), f"{where}: mounts a volume over /run/secrets")
    if security.get("tls_cert_file") or security.get("auth_tokens_file"):
        # The image's HEALTHCHECK (attention-cli health, no CA, no token) needs the plaintext port.
        check(security.get("health_listen"), f"{where}: TLS or tokens without --health_listen: "
                                             f"the image's HEALTHCHECK would fail")
        env = server.get("environment") or {}
        if isinstance(env, list):
            env = dict(e.split("=", 1) for e in env)
        hc = env.get("ATTN_HEALTH_TARGET", "127.0.0.1:50051")
        check(port_of(hc, f"{where} ATTN_HEALTH_TARGET") ==
              port_of(security["health_listen"], f"{where} --health_listen"),
              f"{where}: ATTN_HEALTH_TARGET={hc} is not --health_listen={security['health_listen']}")
        print(f"  attention-server: HEALTHCHECK on the plaintext health port ({hc})")
    if security.get("metrics_auth_file"):
        jobs = [j for j in prom_config.get("scrape_configs") or []
                if any(want in (sc.get("targets") or []) for sc in j.get("static_configs") or [])]
        for job in jobs:
            ba = job.get("basic_auth") or {}
            jw = f"{prom_config_file}: job {job.get('job_name')}"
            check(ba.get("username") and ba.get("password_file") and "password" not in ba,
                  f"{jw}: /metrics needs basic auth: basic_auth with username and password_file")
            pw_file = compose_secret_file(config, "prometheus", ba["password_file"], jw)
            # The password Prometheus sends (it trims surrounding whitespace) must be a user's.
            digest = hashlib.sha256(open(pw_file, "rb").read().strip()).hexdigest()
            users = [line.split() for line in open(hosts["metrics_auth_file"])
                     if line.strip() and not line.startswith("#")]
            check([ba["username"], digest] in [u[:2] for u in users],
                  f"{jw}: user {ba['username']} with the password in {pw_file} is not in "
                  f"{hosts['metrics_auth_file']}")
            print(f"  prometheus: job {job.get('job_name')} sends basic auth as {ba['username']} "
                  f"(password_file {ba['password_file']}), a user of the server's metrics auth file")
        check(jobs, f"{prom_config_file}: no job scrapes {want}")


def main(argv):
    try:
        if len(argv) >= 5 and argv[1] == "k8s":
            flags = server_flags(argv[2])
            uid, gid = dockerfile_user(argv[3])
            seen = set()
            for path in argv[4:]:
                check_k8s(path, flags, uid, gid, seen)
            check("servicemonitor" in seen, "no overlay renders a ServiceMonitor")
            check("queue_depth_hpa" in seen, "no overlay scales on attn_queue_depth")
            check("session_affinity" in seen, "no overlay routes sessions by x-session-id")
            for what in ("tls", "mtls", "tokens", "metrics_auth", "tokens_only"):
                check(what in seen, f"no overlay renders the {what} wiring (components/tls, tokens, mtls)")
            by_name = {os.path.basename(p): p for p in argv[4:]}
            if "overlays_example.yaml" in by_name and "overlays_example-tls.yaml" in by_name:
                check_component_adds_only_security(by_name["overlays_example.yaml"],
                                                   by_name["overlays_example-tls.yaml"])
        elif len(argv) >= 5 and argv[1] == "kserve":
            flags = server_flags(argv[2])
            uid, _ = dockerfile_user(argv[3])
            seen = set()
            for path in argv[4:]:
                check_kserve(path, flags, uid, seen)
            for what in ("ServingRuntime", "ClusterServingRuntime", "isvc_pvc", "isvc_s3"):
                check(what in seen, f"no render of deploy/k8s/kserve has {what}")
        elif len(argv) == 4 and argv[1] == "compose":
            check_compose(argv[3], server_flags(argv[2]))
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except CheckError as e:
        print(f"FAIL: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
