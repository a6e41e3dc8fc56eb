"""Checks that the bridge accepts the config file the Helm chart renders, with the env the pods get.

For each values file (default: the chart's ``ci/*.yaml``; ``ci/invalid/`` is not matched), this

1. renders the chart with ``helm template``;
2. takes the Deployment's ``bridge`` container, and the ConfigMap key its ``--config`` argument names
   (through the container's volume mount);
3. builds the container's environment: ``value`` as is, ``secretKeyRef`` from the chart-made Secret when it
   was rendered (else a placeholder, e.g. for ``existingSecret.name``), ``configMapKeyRef`` likewise,
   ``fieldRef`` as a pod would see it (``metadata.name`` is a made-up pod name);
4. points settings that must name an existing file (``kafka.ssl_cafile``, ``nats.creds_file``...: mounted
   in the pod, absent here) at an empty temp file, as the bridge checks that they exist;
5. runs ``livekit-bridge check-config --config FILE`` with that environment (none of the caller's
   ``BRIDGE_*`` variables) and fails on a non-zero exit;
6. cross-checks the effective settings it prints against the manifests: ``http.listen`` is the
   container's ``http`` port, ``discovery.webhook`` is on exactly when the webhook Service is rendered,
   ``media.recordings_dir`` is on a writable mount, an ``ownership.mode: nats`` replica has its own
   ``replica_id``, and the ``helm test`` Pod gets the same environment as the Deployment.

    python scripts/helm_config_check.py --helm .tools/.../helm [--chart DIR] [VALUES.yaml ...]

Standard library plus PyYAML; the bridge's settings model is imported (to find the file-valued settings)
and ``livekit-bridge`` is the console script next to this interpreter, so run it with the project's venv.
"""

from __future__ import annotations

import argparse
import base64
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Any, Final

import yaml

ROOT: Final = Path(__file__).resolve().parent.parent
DEFAULT_CHART: Final = ROOT / "helm" / "livekit-bus-bridge"
RELEASE: Final = "ci"
NAMESPACE: Final = "default"
CONTAINER: Final = "bridge"

Manifest = dict[str, Any]


class CheckFailed(Exception):
    pass


def file_settings() -> set[tuple[str, str]]:
    """(section, key) of every setting the bridge requires to name an existing file."""
    from typing import get_args

    from pydantic import BaseModel

    from bridge.config import File, Settings

    def mentions_file(annotation: object) -> bool:
        return annotation == File or any(mentions_file(a) for a in get_args(annotation))

    found: set[tuple[str, str]] = set()
    for section, field in Settings.model_fields.items():
        models = [a for a in (field.annotation, *get_args(field.annotation)) if isinstance(a, type)]
        for model in (m for m in models if issubclass(m, BaseModel)):
            for key, sub in model.model_fields.items():
                # pydantic moves a bare Annotated's metadata to the field; compare it with File's.
                if mentions_file(sub.annotation) or (
                    sub.annotation is Path and sub.metadata == list(get_args(File)[1:])
                ):
                    found.add((section, sub.alias or key))
    if not found:
        raise CheckFailed("found no file-valued settings in bridge.config: has the model changed?")
    return found


def render(helm: str, chart: Path, values: Path) -> list[Manifest]:
    cmd = [helm, "template", RELEASE, str(chart), "--namespace", NAMESPACE, "-f", str(values)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)  # noqa: S603 (argv built here)
    if done.returncode != 0:
        raise CheckFailed(f"helm template failed:\n{done.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if isinstance(doc, dict)]


def only(docs: list[Manifest], kind: str, what: str = "") -> Manifest:
    found = [d for d in docs if d.get("kind") == kind and (not what or what in d["metadata"]["name"])]
    if len(found) != 1:
        raise CheckFailed(f"expected one {kind}{f' named *{what}*' if what else ''}, rendered {len(found)}")
    return found[0]


def named(docs: list[Manifest], kind: str, name: str) -> Manifest | None:
    return next((d for d in docs if d.get("kind") == kind and d["metadata"]["name"] == name), None)


def container(pod_spec: Manifest, name: str | None = None) -> Manifest:
    containers = pod_spec["containers"]
    found: list[Manifest] = [c for c in containers if name is None or c["name"] == name]
    if len(found) != 1:
        raise CheckFailed(f"expected one container {name or ''}, found {[c['name'] for c in containers]}")
    return found[0]


def config_text(docs: list[Manifest], pod_spec: Manifest, bridge: Manifest) -> tuple[str, str]:
    """The config file the container's ``--config`` names, resolved through its mounts: (path, text)."""
    args = bridge.get("args", [])
    if "--config" not in args:
        raise CheckFailed(f"the {CONTAINER} container has no --config argument: {args}")
    path = PurePosixPath(args[args.index("--config") + 1])
    mount = next((m for m in bridge.get("volumeMounts", []) if m["mountPath"] == str(path.parent)), None)
    if mount is None:
        raise CheckFailed(f"no volume is mounted at {path.parent} (the --config folder)")
    volume = next(v for v in pod_spec["volumes"] if v["name"] == mount["name"])
    if "configMap" not in volume:
        raise CheckFailed(f"{path.parent} is not a ConfigMap volume")
    cm = named(docs, "ConfigMap", volume["configMap"]["name"])
    if cm is None or path.name not in cm.get("data", {}):
        raise CheckFailed(f"ConfigMap {volume['configMap']['name']} with key {path.name} was not rendered")
    return str(path), cm["data"][path.name]


def environment(docs: list[Manifest], bridge: Manifest, pod_name: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for var in bridge.get("env", []):
        name, source = var["name"], var.get("valueFrom")
        if source is None:
            env[name] = str(var.get("value", ""))
        elif "secretKeyRef" in source or "configMapKeyRef" in source:
            kind, ref = (
                ("Secret", source["secretKeyRef"])
                if "secretKeyRef" in source
                else ("ConfigMap", source["configMapKeyRef"])
            )
            obj = named(docs, kind, ref["name"])
            if obj is None:  # managed outside the chart (existingSecret): any non-empty value will do
                env[name] = f"placeholder-{ref['key']}"
            elif kind == "Secret":
                if ref["key"] not in obj.get("data", {}):
                    raise CheckFailed(f"{name}: Secret {ref['name']} has no key {ref['key']}")
                env[name] = base64.b64decode(obj["data"][ref["key"]]).decode()
            else:
                env[name] = obj["data"][ref["key"]]
        elif "fieldRef" in source:
            field = source["fieldRef"]["fieldPath"]
            env[name] = {"metadata.name": pod_name, "metadata.namespace": NAMESPACE}.get(field, f"<{field}>")
        else:
            env[name] = "1"  # resourceFieldRef
    return env


def with_files(text: str, env: dict[str, str], dummy: Path) -> tuple[str, list[str]]:
    """Points file-valued settings that do not exist here at ``dummy``; returns the text and what changed."""
    keys = file_settings()
    data = yaml.safe_load(text) or {}
    changed: list[str] = []
    for section, key in sorted(keys):
        value = (data.get(section) or {}).get(key)
        if value is not None and not Path(value).is_file():
            data[section][key] = str(dummy)
            changed.append(f"{section}.{key}")
        var = f"BRIDGE_{section.upper()}__{key.upper()}"
        if var in env and not Path(env[var]).is_file():
            env[var] = str(dummy)
            changed.append(var)
    return (yaml.safe_dump(data, sort_keys=False) if changed else text), changed


def under(path: str, mount: str) -> bool:
    return PurePosixPath(path) == PurePosixPath(mount) or PurePosixPath(mount) in PurePosixPath(path).parents


def cross_check(docs: list[Manifest], pod_spec: Manifest, bridge: Manifest, effective: Manifest) -> None:
    port = int(effective["http"]["listen"].rpartition(":")[2])
    http = [p["containerPort"] for p in bridge.get("ports", []) if p.get("name") == "http"]
    if http != [port]:
        raise CheckFailed(f"http.listen is port {port}, the container's http port is {http}")
    webhook_service = any(
        d.get("kind") == "Service" and d["metadata"]["name"].endswith("-webhook") for d in docs
    )
    if effective["discovery"]["webhook"] != webhook_service:
        raise CheckFailed(
            f"discovery.webhook is {effective['discovery']['webhook']} but the webhook Service is "
            f"{'' if webhook_service else 'not '}rendered"
        )
    recordings = effective["media"]["recordings_dir"]
    if recordings is not None and not any(
        under(recordings, m["mountPath"]) and not m.get("readOnly") for m in bridge.get("volumeMounts", [])
    ):
        raise CheckFailed(f"media.recordings_dir {recordings} is on the read-only root filesystem")
    if effective["ownership"]["mode"] == "nats" and not effective["ownership"]["replica_id"]:
        raise CheckFailed("ownership.mode nats without a per-pod ownership.replica_id")
    test_pod = next((d for d in docs if d.get("kind") == "Pod"), None)
    if test_pod is not None and container(test_pod["spec"]).get("env") != bridge.get("env"):
        raise CheckFailed(
            "the helm test Pod's env differs from the Deployment's: check-config there would lie"
        )


def check(helm: str, chart: Path, bridge_cli: list[str], values: Path, tmp: Path) -> list[str]:
    """Checks one values file; returns notes for the log. Raises CheckFailed."""
    docs = render(helm, chart, values)
    deployment = only(docs, "Deployment")
    pod_spec = deployment["spec"]["template"]["spec"]
    bridge = container(pod_spec, CONTAINER)
    config_path, text = config_text(docs, pod_spec, bridge)
    env = environment(docs, bridge, f"{deployment['metadata']['name']}-5d8f7c9b6-x2x7q")
    dummy = tmp / "mounted-file"
    dummy.write_text("")
    text, substituted = with_files(text, env, dummy)
    config = tmp / f"{values.stem}.config.yaml"
    config.write_text(text, encoding="utf-8")
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")} | env
    done = subprocess.run(  # noqa: S603 (the venv's own livekit-bridge, argv built here)
        [*bridge_cli, "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        env=run_env,
        check=False,
    )
    if done.returncode != 0:
        raise CheckFailed(
            f"check-config ({config_path} from the ConfigMap, env {sorted(env)}) exited {done.returncode}:\n"
            f"{(done.stdout + done.stderr).strip()}"
        )
    cross_check(docs, pod_spec, bridge, yaml.safe_load(done.stdout))
    notes = [f"env {', '.join(sorted(env))}"]
    if substituted:
        notes.append(f"temp file for {', '.join(substituted)}")
    return notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--helm", default="helm", help="helm binary")
    parser.add_argument("--chart", type=Path, default=DEFAULT_CHART, help="chart directory")
    parser.add_argument("values", nargs="*", type=Path, help="values files (default: CHART/ci/*.yaml)")
    args = parser.parse_args(argv)

    files = args.values or sorted((args.chart / "ci").glob("*.yaml"))
    if not files:
        print(f"helm_config_check: no values files in {args.chart / 'ci'}", file=sys.stderr)
        return 1
    script = Path(sys.executable).parent / "livekit-bridge"
    bridge_cli = [str(script)] if script.is_file() else [sys.executable, "-m", "bridge"]
    failed = 0
    with tempfile.TemporaryDirectory(prefix="helm-config-check-") as tmp:
        for values in files:
            started = time.monotonic()
            try:
                notes = check(args.helm, args.chart, bridge_cli, values, Path(tmp))
            except CheckFailed as exc:
                failed += 1
                print(f"FAIL {values}: {exc}", file=sys.stderr)
                continue
            took = time.monotonic() - started
            print(f"ok   {values}: check-config accepted it ({'; '.join(notes)}) in {took:.1f} s")
    if failed:
        print(
            f"helm_config_check: {failed} of {len(files)} values files failed (rendering, check-config or a"
            " cross-check)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
