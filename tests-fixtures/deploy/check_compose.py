"""Checks a Compose file as `docker compose config` would, without a Docker engine:

1. YAML anchors and merge keys are resolved, and `${NAME:-default}` / `${NAME}` / `$$` are
   interpolated with the defaults the file gives (the caller's environment is ignored, so the
   result does not depend on the machine);
2. the result is validated against the Compose Specification's JSON schema (compose-spec.json
   in the venv of tests-fixtures/deploy/setup, from the docker-compose 1.29.2 wheel);
3. the references the schema cannot see are checked: every secret, named volume, network and
   depends_on target a service names is declared.

Prints the interpolated file as JSON on stdout (for the test's own assertions); problems go to
stderr, with exit status 1.

  check_compose.py deploy/compose.yaml
"""

import json
import os
import re
import sys

import jsonschema
import yaml

VARIABLE = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


def interpolate(value, problems, where):
    if isinstance(value, dict):
        return {k: interpolate(v, problems, "%s/%s" % (where, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, problems, "%s/%d" % (where, i)) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def one(m):
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, default = m.group(2), m.group(3)
        if op in (":-", "-"):
            return default
        problems.append("%s: ${%s} has no default (set in .env only)" % (where, name))
        return ""

    return VARIABLE.sub(one, value)


def references(doc, problems):
    declared = {k: set((doc.get(k) or {}).keys()) for k in ("secrets", "volumes", "networks")}
    services = doc.get("services") or {}
    for name, svc in services.items():
        for s in svc.get("secrets", []):
            s = s if isinstance(s, str) else s.get("source")
            if s not in declared["secrets"]:
                problems.append("services/%s: secret %s is not declared" % (name, s))
        for v in svc.get("volumes", []):
            source = v.split(":", 1)[0] if isinstance(v, str) else v.get("source", "")
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
            if not isinstance(v, str):
                kind = v.get("type", kind)
            if kind == "volume" and source and source not in declared["volumes"]:
                problems.append("services/%s: volume %s is not declared" % (name, source))
        nets = svc.get("networks", [])
        for n in nets if isinstance(nets, list) else list(nets):
            if n not in declared["networks"]:
                problems.append("services/%s: network %s is not declared" % (name, n))
        deps = svc.get("depends_on", [])
        for d in deps if isinstance(deps, list) else list(deps):
            if d not in services:
                problems.append("services/%s: depends on unknown service %s" % (name, d))
            elif set(services[d].get("profiles", [])) - set(svc.get("profiles", [])):
                problems.append("services/%s: depends on %s, which only a profile starts" % (name, d))


def main(argv):
    with open(argv[0]) as f:
        raw = yaml.safe_load(f)
    problems = []
    doc = interpolate(raw, problems, "")
    schema_path = os.path.join(os.path.dirname(os.path.dirname(sys.executable)), "compose-spec.json")
    with open(schema_path) as f:
        schema = json.load(f)
    # The file declares draft 2019-09 (with a `$schema` URI jsonschema does not know by that
    # spelling), so the draft is named here.
    validator = jsonschema.Draft201909Validator
    validator.check_schema(schema)
    for e in sorted(validator(schema).iter_errors(doc), key=lambda e: list(e.absolute_path)):
        path = "/".join(str(p) for p in e.absolute_path) or "(top)"
        problems.append("%s: %s" % (path, e.message))
    references(doc, problems)
    for p in problems:
        sys.stderr.write(p + "\n")
    json.dump(doc, sys.stdout)
    sys.stdout.write("\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
