"""Run the rendered Kubernetes manifests' Deployments in Docker, doing what the kubelet would.

    kubectl kustomize deploy/k8s/overlays/production > rendered.yaml
    python deploy/ci/k8s_harness.py --image ticket-enhancer:ci --manifests rendered.yaml \\
        --values deploy/ci/k8s-values.env

A test harness, not a product: the translation is deliberately small. For each Deployment it starts
`replicas` pods (at most --max-replicas), each a pause container holding the pod's network namespace and
fixed IP, with the pod's emptyDir volumes (tmpfs, group-owned by fsGroup) shared by its containers. Init
containers run in order and must exit 0; then the containers start with exactly the manifest's command and
args, env (value, ConfigMap and Secret refs, envFrom, fieldRef podIP/name), workingDir, securityContext
(runAsUser/Group, runAsNonRoot, fsGroup, readOnlyRootFilesystem, capabilities, allowPrivilegeEscalation,
seccomp RuntimeDefault = Docker's default profile), volumeMounts and resource limits. The startup, readiness
and liveness probes (httpGet from the node to podIP:port with the manifest's headers, exec inside the
container, tcpSocket) run with their own timeouts, thresholds and delays; waits are capped by --max-wait
so CI cannot hang. Then PostgreSQL is stopped: readiness must fail within its failure window and pass again
after PostgreSQL is back. Secrets come from --values (the Secret is never in git); every image of the app
is the one under test, the manifests' image name is not pulled.
Not emulated (there is no cluster): scheduling, Services, Ingress, NetworkPolicy, HPA, PDB, restarts.
Exit status 0 when every pod came up and every probe behaved, 1 otherwise (the reason on stderr).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import ipaddress
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

NETWORK = "k8s-harness"
SUBNET = ipaddress.ip_network("10.213.250.0/24")
PREFIX = "k8s"


class HarnessError(Exception):
    """The manifests do not work with the image: what the kubelet or a probe would have reported."""


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the docker CLI and return the finished process; raise HarnessError when check fails."""
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise HarnessError(f"docker {' '.join(args[:3])}...: {result.stderr.strip()[-800:]}")
    return result


def quantity_bytes(value: str) -> int:
    """Return a Kubernetes memory quantity (512Mi, 1G, 64Mi) in bytes."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9, "": 1}
    number, unit = re.fullmatch(r"([0-9.]+)([KMG]i?|)", str(value)).groups()  # type: ignore[union-attr]
    return int(float(number) * units[unit])


def quantity_cpus(value: str) -> str:
    """Return a Kubernetes CPU quantity (500m, 1) as docker's --cpus value."""
    text = str(value)
    return str(int(text[:-1]) / 1000) if text.endswith("m") else text


@dataclass
class Pod:
    deployment: str
    index: int
    spec: dict[str, Any]
    ip: str
    name: str = ""
    volumes: dict[str, str] = field(default_factory=dict)  # volume name -> docker volume
    containers: dict[str, str] = field(default_factory=dict)  # container name -> docker name


class Harness:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        docs = [d for d in yaml.safe_load_all(Path(args.manifests).read_text()) if d]
        self.configmaps = {d["metadata"]["name"]: d.get("data") or {} for d in docs if d["kind"] == "ConfigMap"}
        self.deployments = [d for d in docs if d["kind"] == "Deployment"]
        if args.deployment:
            self.deployments = [d for d in self.deployments if d["metadata"]["name"] in args.deployment]
        if not self.deployments:
            raise HarnessError("no Deployment in the manifests")
        self.secrets = self._read_values(Path(args.values))
        self.pods: list[Pod] = []
        self._ips = (str(ip) for ip in list(SUBNET.hosts())[20:])

    @staticmethod
    def _read_values(path: Path) -> dict[str, dict[str, str]]:
        """Return {secret name: {key: value}} from lines `secret-name/KEY=value`."""
        secrets: dict[str, dict[str, str]] = {}
        for line in path.read_text().splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            ref, _, value = line.partition("=")
            name, _, key = ref.strip().partition("/")
            secrets.setdefault(name, {})[key] = value
        return secrets

    def log(self, message: str) -> None:
        print(f"     k8s  {message}", flush=True)

    # -- the cluster's parts that are not under test -------------------------------------------------
    def start_backing_services(self) -> None:
        docker("network", "create", "--subnet", str(SUBNET), NETWORK)
        env = self.secrets.get("harness", {})
        docker(
            "run",
            "-d",
            "--name",
            f"{PREFIX}-postgres",
            "--network",
            NETWORK,
            "--network-alias",
            "postgres",
            "-e",
            f"POSTGRES_USER={env.get('POSTGRES_USER', 'ticket_enhancer')}",
            "-e",
            f"POSTGRES_PASSWORD={env.get('POSTGRES_PASSWORD', 'ci')}",
            "-e",
            f"POSTGRES_DB={env.get('POSTGRES_DB', 'ticket_enhancer')}",
            "-v",
            f"{PREFIX}-pgdata:/var/lib/postgresql/data",
            "local/postgres:15-ci",
        )
        docker(
            "run",
            "-d",
            "--name",
            f"{PREFIX}-redis",
            "--network",
            NETWORK,
            "--network-alias",
            "redis",
            "local/redis:7-ci",
            "redis-server",
        )
        self.wait_postgres()

    def wait_postgres(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if docker("exec", f"{PREFIX}-postgres", "pg_isready", "-q", check=False).returncode == 0:
                return
            time.sleep(0.5)
        raise HarnessError("the harness's PostgreSQL did not start")

    # -- manifest -> docker -------------------------------------------------------------------------
    def env_for(self, container: dict[str, Any], pod: Pod) -> list[str]:
        values: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            if "configMapRef" in source:
                name = source["configMapRef"]["name"]
                if name not in self.configmaps and not source["configMapRef"].get("optional"):
                    raise HarnessError(f"{pod.name}/{container['name']}: ConfigMap {name} not in the manifests")
                values.update(self.configmaps.get(name, {}))
            elif "secretRef" in source:
                values.update(self.secrets.get(source["secretRef"]["name"], {}))
        for item in container.get("env") or []:
            name = item["name"]
            if "value" in item:
                values[name] = str(item["value"])
                continue
            ref = item.get("valueFrom") or {}
            if "secretKeyRef" in ref or "configMapKeyRef" in ref:
                kind = "secretKeyRef" if "secretKeyRef" in ref else "configMapKeyRef"
                key_ref = ref[kind]
                store = self.secrets if kind == "secretKeyRef" else self.configmaps
                found = store.get(key_ref["name"], {}).get(key_ref["key"])
                if found is None:
                    if key_ref.get("optional"):
                        continue
                    raise HarnessError(
                        f"{pod.name}/{container['name']}: CreateContainerConfigError: {kind} "
                        f"{key_ref['name']}/{key_ref['key']} not found"
                    )
                values[name] = found
            elif "fieldRef" in ref:
                path = ref["fieldRef"]["fieldPath"]
                fields = {"status.podIP": pod.ip, "metadata.name": pod.name, "metadata.namespace": "ticket-enhancer"}
                if path not in fields:
                    raise HarnessError(f"{pod.name}/{container['name']}: fieldRef {path} not emulated")
                values[name] = fields[path]
            else:
                values[name] = ""
        return [f"{key}={value}" for key, value in values.items()]

    def run_args(self, container: dict[str, Any], pod: Pod, *, detach: bool) -> list[str]:
        pod_sc = pod.spec.get("securityContext") or {}
        sc = {**pod_sc, **(container.get("securityContext") or {})}
        user, group = sc.get("runAsUser"), sc.get("runAsGroup")
        if sc.get("runAsNonRoot"):
            image_user = docker("image", "inspect", "--format", "{{.Config.User}}", self.args.image).stdout.strip()
            effective = str(user) if user is not None else image_user.split(":")[0]
            if not effective.isdigit() or int(effective) == 0:
                raise HarnessError(f"{pod.name}/{container['name']}: runAsNonRoot but the user is {effective!r}")
        name = f"{PREFIX}-{pod.name}-{container['name']}"
        args = ["run", "--name", name, "--network", f"container:{PREFIX}-{pod.name}-pause"]
        args += ["-d"] if detach else []
        if user is not None:
            args += ["--user", f"{user}:{group if group is not None else user}"]
        if pod_sc.get("fsGroup") is not None:
            args += ["--group-add", str(pod_sc["fsGroup"])]
        for extra in pod_sc.get("supplementalGroups") or []:
            args += ["--group-add", str(extra)]
        if sc.get("readOnlyRootFilesystem"):
            args.append("--read-only")
        caps = sc.get("capabilities") or {}
        args += [f"--cap-drop={cap}" for cap in caps.get("drop") or []]
        args += [f"--cap-add={cap}" for cap in caps.get("add") or []]
        if sc.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges:true"]
        if (sc.get("seccompProfile") or {}).get("type") not in (None, "RuntimeDefault"):
            raise HarnessError(f"{pod.name}: seccomp profile {sc['seccompProfile']} not emulated")
        limits = (container.get("resources") or {}).get("limits") or {}
        if "memory" in limits:
            args += ["--memory", str(quantity_bytes(limits["memory"]))]
        if "cpu" in limits:
            args += ["--cpus", quantity_cpus(limits["cpu"])]
        for mount in container.get("volumeMounts") or []:
            volume = pod.volumes.get(mount["name"])
            if volume is None:
                raise HarnessError(f"{pod.name}/{container['name']}: volumeMount {mount['name']} has no volume")
            options = f"type=volume,src={volume},dst={mount['mountPath']}"
            args += ["--mount", options + (",readonly" if mount.get("readOnly") else "")]
        if container.get("workingDir"):
            args += ["--workdir", container["workingDir"]]
        for env in self.env_for(container, pod):
            args += ["--env", env]
        command, cmd_args = container.get("command"), container.get("args")
        if command:
            args += ["--entrypoint", command[0], self.args.image, *command[1:], *(cmd_args or [])]
        else:
            args += [self.args.image, *(cmd_args or [])]
        return args

    def create_pod(self, deployment: dict[str, Any], index: int) -> Pod:
        spec = deployment["spec"]["template"]["spec"]
        pod = Pod(deployment["metadata"]["name"], index, spec, next(self._ips))
        pod.name = f"{pod.deployment}-{index}"
        pod_sc = spec.get("securityContext") or {}
        for volume in spec.get("volumes") or []:
            if "emptyDir" not in volume:
                raise HarnessError(f"{pod.name}: volume {volume['name']} is not an emptyDir (not emulated)")
            empty = volume["emptyDir"] or {}
            gid = pod_sc.get("fsGroup", 0)
            # Both media become tmpfs here; kubelet makes the directory group-owned by fsGroup, setgid.
            options = f"mode=2777,gid={gid}"
            if empty.get("sizeLimit"):
                options += f",size={quantity_bytes(empty['sizeLimit'])}"
            docker_volume = f"{PREFIX}-{pod.name}-{volume['name']}"
            docker(
                "volume",
                "create",
                "--driver",
                "local",
                "--opt",
                "type=tmpfs",
                "--opt",
                "device=tmpfs",
                "--opt",
                f"o={options}",
                docker_volume,
            )
            pod.volumes[volume["name"]] = docker_volume
        docker(
            "run",
            "-d",
            "--name",
            f"{PREFIX}-{pod.name}-pause",
            "--network",
            NETWORK,
            "--ip",
            pod.ip,
            "--hostname",
            pod.name,
            "--read-only",
            "--cap-drop=ALL",
            "--user",
            "65534:65534",
            "--entrypoint",
            "sleep",
            self.args.image,
            "infinity",
        )
        self.pods.append(pod)
        return pod

    def run_init_containers(self, pod: Pod) -> None:
        for container in pod.spec.get("initContainers") or []:
            started = time.monotonic()
            args = self.run_args(container, pod, detach=True)
            docker(*args)
            name = f"{PREFIX}-{pod.name}-{container['name']}"
            pod.containers[container["name"]] = name
            try:
                code = docker("wait", name, timeout=self.args.max_wait + 60, check=False).stdout.strip()
            except subprocess.TimeoutExpired:
                code = f"nothing: still running after {self.args.max_wait + 60:.0f}s"
            if code != "0":
                logs = docker("logs", "--tail", "15", name, check=False)
                raise HarnessError(
                    f"{pod.name}: init container {container['name']} exited {code or '?'}:\n"
                    f"{(logs.stdout + logs.stderr).strip()[-1500:]}"
                )
            self.log(f"{pod.name}: init container {container['name']} exit 0 in {time.monotonic() - started:.1f}s")

    def start_containers(self, pod: Pod) -> float:
        started = time.monotonic()
        for container in pod.spec["containers"]:
            docker(*self.run_args(container, pod, detach=True))
            pod.containers[container["name"]] = f"{PREFIX}-{pod.name}-{container['name']}"
        return started

    # -- probes -------------------------------------------------------------------------------------
    def probe_once(self, pod: Pod, container: dict[str, Any], probe: dict[str, Any]) -> tuple[bool, str]:
        timeout = float(probe.get("timeoutSeconds", 1))
        if "httpGet" in probe:
            get = probe["httpGet"]
            port = self.port_number(container, get["port"])
            scheme = get.get("scheme", "HTTP").lower()
            url = f"{scheme}://{pod.ip}:{port}{get.get('path', '/')}"
            request = urllib.request.Request(url, headers={"User-Agent": "kube-probe/1.30"})
            for header in get.get("httpHeaders") or []:
                request.add_header(header["name"], header["value"])
            try:
                with urllib.request.urlopen(request, timeout=timeout) as answer:
                    return 200 <= answer.status < 400, f"GET {get.get('path')} {answer.status}"
            except urllib.error.HTTPError as error:
                return 200 <= error.code < 400, f"GET {get.get('path')} {error.code}"
            except OSError as error:
                return False, f"GET {get.get('path')} {type(error).__name__}: {error}"
        if "exec" in probe:
            name = pod.containers[container["name"]]
            try:
                result = docker("exec", name, *probe["exec"]["command"], timeout=timeout, check=False)
            except subprocess.TimeoutExpired:
                return False, f"exec timed out after {timeout:g}s"
            return result.returncode == 0, f"exec exit {result.returncode} {result.stdout.strip()[:120]}"
        if "tcpSocket" in probe:
            port = self.port_number(container, probe["tcpSocket"]["port"])
            try:
                socket.create_connection((pod.ip, port), timeout=timeout).close()
                return True, f"tcp {port} open"
            except OSError as error:
                return False, f"tcp {port}: {error}"
        raise HarnessError(f"{pod.name}: probe handler not emulated: {probe}")

    @staticmethod
    def port_number(container: dict[str, Any], port: int | str) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for item in container.get("ports") or []:
            if item.get("name") == port:
                return int(item["containerPort"])
        raise HarnessError(f"{container['name']}: probe port {port!r} is not a named containerPort")

    def assert_running(self, pod: Pod, container: dict[str, Any]) -> None:
        name = pod.containers[container["name"]]
        state = docker("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", name).stdout.split()
        if state[0] != "running":
            logs = docker("logs", "--tail", "15", name, check=False)
            raise HarnessError(
                f"{pod.name}/{container['name']} is {state[0]} (exit {state[1]}):\n"
                f"{(logs.stdout + logs.stderr).strip()[-1500:]}"
            )

    def wait_probe(self, pod: Pod, container: dict[str, Any], kind: str, started: float, *, want: bool = True) -> str:
        """Poll a probe at its period until it answers `want` within its window; return what it saw."""
        probe = container.get(kind)
        if not probe:
            return "none"
        period = float(probe.get("periodSeconds", 10))
        threshold = int(probe.get("failureThreshold", 3))
        delay = float(probe.get("initialDelaySeconds", 0))
        window = delay + threshold * period + float(probe.get("timeoutSeconds", 1))
        deadline = min(time.monotonic() + window, time.monotonic() + self.args.max_wait)
        time.sleep(max(0.0, started + delay - time.monotonic()))
        detail = ""
        consecutive_failures = 0
        while True:
            self.assert_running(pod, container)
            ok, detail = self.probe_once(pod, container, probe)
            if ok == want:
                return detail
            consecutive_failures += 1
            if kind == "livenessProbe" and want and consecutive_failures >= threshold:
                raise HarnessError(f"{pod.name}/{container['name']}: liveness failed {threshold} times: {detail}")
            if time.monotonic() > deadline:
                verb = "pass" if want else "fail"
                raise HarnessError(
                    f"{pod.name}/{container['name']}: {kind} did not {verb} within "
                    f"{min(window, self.args.max_wait):.0f}s (last: {detail})"
                )
            # Poll faster than the period when waiting to pass, so CI does not sleep needlessly; the window
            # (initial delay + threshold x period) is the manifest's.
            time.sleep(min(period, 1.0) if want else period)

    def bring_up(self, pod: Pod) -> None:
        self.run_init_containers(pod)
        started = self.start_containers(pod)
        for container in pod.spec["containers"]:
            seen = self.wait_probe(pod, container, "startupProbe", started)
            seen_ready = self.wait_probe(pod, container, "readinessProbe", started)
            ready_at = time.monotonic() - started
            seen_live = self.wait_probe(pod, container, "livenessProbe", started)
            self.log(
                f"{pod.name}/{container['name']}: startup {seen}; ready ({seen_ready}) {ready_at:.1f}s after start; "
                f"liveness {seen_live}"
            )

    # -- the scenario -------------------------------------------------------------------------------
    def run(self) -> None:
        self.start_backing_services()
        pods: list[Pod] = []
        # Deployments one after another in manifest order (web, whose init containers migrate, comes first):
        # the kubelet would restart a worker that started before the schema existed; the harness does not
        # emulate restarts, so it starts the next Deployment once the previous one is up. The pods of one
        # Deployment start together, as on a first install: their init containers race.
        for deployment in self.deployments:
            # Two pods where init containers race (the point of starting several), one otherwise (CPU).
            cap = self.args.max_replicas if deployment["spec"]["template"]["spec"].get("initContainers") else 1
            replicas = min(int(deployment["spec"].get("replicas", 1)), cap)
            group = [self.create_pod(deployment, index) for index in range(replicas)]
            with concurrent.futures.ThreadPoolExecutor(max_workers=len(group)) as pool:
                for future in [pool.submit(self.bring_up, pod) for pod in group]:
                    future.result()
            pods += group
        applied = docker(
            "exec",
            f"{PREFIX}-postgres",
            "psql",
            "-U",
            self.secrets.get("harness", {}).get("POSTGRES_USER", "ticket_enhancer"),
            "-d",
            self.secrets.get("harness", {}).get("POSTGRES_DB", "ticket_enhancer"),
            "-tAc",
            "SELECT count(*), count(DISTINCT (app, name)) FROM django_migrations",
        ).stdout.strip()
        total, distinct = applied.split("|")
        if total != distinct:
            raise HarnessError(f"django_migrations has duplicates after concurrent init containers: {applied}")
        self.log(
            f"schema applied once ({total} migrations) by "
            f"{sum(1 for p in pods if p.spec.get('initContainers'))} racing init containers"
        )
        if not self.args.no_outage:
            self.outage(pods)

    def outage(self, pods: list[Pod]) -> None:
        """Stop PostgreSQL: readiness must fail within its window, then pass again once it is back."""
        checked = [
            (pod, c) for pod in pods for c in pod.spec["containers"] if (c.get("readinessProbe") or {}).get("httpGet")
        ]
        docker("stop", "-t", "5", f"{PREFIX}-postgres")
        stopped = time.monotonic()
        for pod, container in checked:
            seen = self.wait_probe(pod, container, "readinessProbe", time.monotonic() - 1e9, want=False)
            self.log(
                f"{pod.name}/{container['name']}: PostgreSQL down -> readiness fails ({seen}) "
                f"{time.monotonic() - stopped:.1f}s after the stop"
            )
        for pod, container in checked:
            _, live = (
                self.probe_once(pod, container, container["livenessProbe"])
                if container.get("livenessProbe")
                else (True, "none")
            )
            self.log(f"{pod.name}/{container['name']}: liveness during the outage: {live}")
        docker("start", f"{PREFIX}-postgres")
        self.wait_postgres()
        back = time.monotonic()
        for pod, container in checked:
            seen = self.wait_probe(pod, container, "readinessProbe", time.monotonic() - 1e9)
            self.log(
                f"{pod.name}/{container['name']}: PostgreSQL back -> readiness passes ({seen}) "
                f"{time.monotonic() - back:.1f}s later"
            )

    def cleanup(self) -> None:
        names = docker("ps", "-aq", "--filter", f"name=^{PREFIX}-", check=False).stdout.split()
        if names:
            docker("rm", "-f", "-v", *names, check=False, timeout=120)
        volumes = docker("volume", "ls", "-q", "--filter", f"name=^{PREFIX}-", check=False).stdout.split()
        if volumes:
            docker("volume", "rm", "-f", *volumes, check=False)
        docker("network", "rm", NETWORK, check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True, help="the image under test (replaces the manifests' images)")
    parser.add_argument("--manifests", required=True, help="output of kubectl kustomize")
    parser.add_argument("--values", required=True, help="Secret values: lines secret-name/KEY=value")
    parser.add_argument("--deployment", action="append", help="only this Deployment (repeatable)")
    parser.add_argument("--max-replicas", type=int, default=2, help="pods per Deployment at most (default 2)")
    parser.add_argument("--max-wait", type=float, default=120, help="cap on any one wait, seconds (default 120)")
    parser.add_argument("--no-outage", action="store_true", help="skip the PostgreSQL outage")
    parser.add_argument("--figures", help="append figures to this file")
    args = parser.parse_args(argv)
    started = time.monotonic()
    harness: Harness | None = None
    try:
        harness = Harness(args)
        harness.cleanup()
        harness.run()
    except (HarnessError, subprocess.TimeoutExpired) as error:
        print(f"FAIL (k8s): {error}", file=sys.stderr, flush=True)
        return 1
    finally:
        if harness is not None:
            harness.cleanup()
    elapsed = time.monotonic() - started
    print(f"ok   k8s manifests exercised: {len(harness.deployments)} Deployments in {elapsed:.0f}s", flush=True)
    if args.figures:
        with open(args.figures, "a", encoding="utf-8") as out:
            out.write(f"k8s harness (all Deployments, probes, outage), s: {elapsed:.1f}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
